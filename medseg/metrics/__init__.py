"""Segmentation metrics per case and class, from integer label maps (X, Y, Z) and spacing in mm.

Overlap: Dice, IoU, precision, recall, pixel accuracy (per class, binary: (TP + TN) / N).
Surface (mm, anisotropic spacing honoured): HD95, ASSD, normalised surface Dice (NSD) and
boundary F1 at a tolerance in mm. Volume difference: predicted minus reference, in ml.

Surfaces are the mask voxels removed by one binary erosion (6-connectivity, voxels on the image
border count as surface), and distances run between surface voxel centres, as in MONAI
(`get_mask_edges` / `get_surface_distance`) and the DeepMind surface-distance convention with
voxel counts rather than surfel areas.

Empty-mask conventions (a class absent from the prediction, the reference, or both):
- both empty: Dice = IoU = precision = recall = NSD = boundary F1 = 1; HD95 = ASSD = 0; the row is
  flagged `both_empty` and `summarise` leaves it out of the means (as nnU-Net does) unless
  `count_empty=True`;
- exactly one empty (a missed or a false structure): Dice = IoU = precision = recall = NSD =
  boundary F1 = 0; HD95 = ASSD = a distance penalty, by default the diagonal of the image's extent
  in mm (`surface.distance_penalty`; BraTS's 374 mm is this diagonal for 240 x 240 x 155 voxels of
  1 mm), or `penalty_mm`. No metric is NaN, so no mean silently drops a missed structure.
Voxels where the reference holds `ignore_index` (default 255) are left out of every count and
treated as background for surfaces. Nothing here raises on empty masks.
"""

from medseg.metrics.overlap import confusion_matrix, dice_per_class, overlap_metrics
from medseg.metrics.surface import distance_penalty, surface_distances, surface_metrics
from medseg.metrics.case import METRIC_COLUMNS, case_metrics, summarise

__all__ = [
    "METRIC_COLUMNS",
    "case_metrics",
    "confusion_matrix",
    "dice_per_class",
    "distance_penalty",
    "overlap_metrics",
    "summarise",
    "surface_distances",
    "surface_metrics",
]
