"""DICOM SEG built with highdicom, referencing the source series it was predicted on.

Geometry: the mask is a `Volume` (X, Y, Z) = (columns, rows, slices along the normal) whose affine
must equal the source series' grid as recomputed from the headers (`geometry.source_grid`). It is
handed to highdicom as a `highdicom.Volume` (array (slices, rows, columns), LPS affine), so every
frame is placed, and matched to its source slice or multi-frame frame, by position, never by the
order of files or frames.

`build_dicom_seg` returns the SEG as an in-memory Dataset (nothing touches the disk);
`write_dicom_seg` saves it atomically. `read_dicom_seg` takes a path or a Dataset.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError, OutputError
from medseg.io.atomic import atomic_output
from medseg.io.dicom.geometry import SourceGrid, check_on_source_grid, source_grid
from medseg.io.dicom.series import source_datasets
from medseg.volume import LPS_TO_RAS, Volume

log = logging.getLogger(__name__)


def _highdicom_volume(labels: np.ndarray, grid: SourceGrid, frame_of_reference_uid: str):
    """(X, Y, Z) labels -> highdicom Volume: array (k, rows, columns), affine (k, row, column) -> LPS mm."""
    import highdicom as hd

    swap = np.eye(4)[[2, 1, 0, 3]]  # (k, j, i) -> (i, j, k)
    affine = LPS_TO_RAS @ grid.affine @ swap
    return hd.Volume(np.ascontiguousarray(labels.transpose(2, 1, 0)), affine, coordinate_system="PATIENT",
                     frame_of_reference_uid=frame_of_reference_uid)


def build_dicom_seg(
    mask: Volume,
    datasets: list[Any],
    label_names: dict[int, str],
    label_codes: dict[int, Any] | None = None,
    model_name: str = "medseg",
    series_description: str = "medseg segmentation",
):
    """An (X, Y, Z) label map on the source grid as a binary DICOM SEG, in memory.

    mask: labels (label values, e.g. {0, 1, 2, 4}) as a Volume on the source series' grid; its
        affine is checked against the series' headers (`check_on_source_grid`).
    datasets: the source headers (`DicomSeries.datasets`, or the Datasets it was read from):
        single-frame slices in any order, or one enhanced multi-frame object; left unchanged.
        Frames are placed by geometry: highdicom matches each mask slice to the source slice or
        frame at the same position.
    label_codes: per label value a `medseg.label_codes.LabelCode` or its JSON dict; labels without
        one use the built-in table by name, else a generic code (with a warning).
    One segment per non-empty label (numbered 1.. in label order, TrackingID "label <value>");
    empty labels are omitted with a warning. Returns a `highdicom.seg.Segmentation` (a pydicom
    Dataset; `.save_as(path)` or `write_dicom_seg` to store it).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medseg import __version__
    from medseg.label_codes import codes_for_writing

    grid = check_on_source_grid(mask, datasets, "DICOM SEG")
    labels = np.asarray(mask.array)
    present = set(int(v) for v in np.unique(labels)) - {0}
    wanted = [int(k) for k in sorted(label_names) if int(k) != 0]
    for k in wanted:
        if k not in present:
            log.warning("label %d (%s) is empty and is left out of the DICOM SEG", k, label_names[k])
    unnamed = sorted(present - set(wanted))
    if unnamed:
        raise InputError(f"DICOM SEG: the mask holds values {unnamed} that have no label name; expected {wanted}")
    kept = [k for k in wanted if k in present]
    if not kept:
        raise OutputError("DICOM SEG: the mask is empty (no label present), and a SEG needs at least one segment; write NIfTI instead")

    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name, family=codes.cid7162.ArtificialIntelligence, version=f"medseg {__version__}"
    )
    coded = codes_for_writing({k: label_names[k] for k in kept}, label_codes, "DICOM SEG")
    descriptions = []
    remap = np.zeros(max(present) + 1, dtype=np.uint16)
    for number, k in enumerate(kept, start=1):
        remap[k] = number
        code = coded[k]
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(label_names[k])[:64],
            segmented_property_category=_code(code.category),
            segmented_property_type=_code(code.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"label {k}",
            tracking_uid=hd.UID(),
        )
        if code.modifier:  # nested in the type item (PS3.3 Segment Description Macro); highdicom has no argument for it
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [_code(code.modifier)]
        descriptions.append(description)
    sources = source_datasets(grid.datasets)
    if grid.regular:
        volume = _highdicom_volume(remap[labels], grid, str(sources[0].FrameOfReferenceUID))
    else:  # tilted or gapped series: one frame per source slice, placed by that slice's own header
        volume = np.ascontiguousarray(remap[labels].transpose(2, 1, 0))
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=volume,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name=model_name[:64],
        software_versions=__version__,
        device_serial_number="0",
        series_description=series_description[:64],
    )
    _check_references(seg, grid)
    return seg


def write_dicom_seg(
    mask: Volume,
    datasets: list[Any],
    path: str | os.PathLike,
    label_names: dict[int, str],
    label_codes: dict[int, Any] | None = None,
    model_name: str = "medseg",
    series_description: str = "medseg segmentation",
) -> Path:
    """`build_dicom_seg`, saved atomically to `path` (temporary name, then rename)."""
    seg = build_dicom_seg(mask, datasets, label_names, label_codes, model_name=model_name,
                          series_description=series_description)
    path = Path(path)
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
    return path


def _code(code) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(*[str(v) for v in code])


def _check_references(seg, grid: SourceGrid) -> None:
    """Every SEG frame must reference the source slice/frame at its own position: a frame that
    highdicom could not match would be a segmentation floating off its source."""
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        derivation = frame.get("DerivationImageSequence")
        if not derivation or not derivation[0].get("SourceImageSequence"):
            raise OutputError(
                f"DICOM SEG: frame {index} could not be matched to a source slice by position; "
                "the source headers' geometry is inconsistent (report this with the series' geometry, not its data)"
            )


def _label_value(description: Any) -> int:
    """The label value a segment was written from (TrackingID "label <value>"), else its number."""
    match = re.fullmatch(r"label (\d+)", str(description.get("TrackingID", "") or ""))
    return int(match.group(1)) if match else int(description.SegmentNumber)


def _as_segmentation(seg: Any):
    """(a name for messages, a highdicom Segmentation) from a path or an in-memory Dataset (not modified)."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    if isinstance(seg, hd.seg.Segmentation):
        return "the SEG Dataset", seg
    if isinstance(seg, Dataset):
        if str(seg.get("Modality", "")) != "SEG":
            raise InputError(f"the SEG Dataset: modality {seg.get('Modality')!r}, expected SEG")
        return "the SEG Dataset", hd.seg.Segmentation.from_dataset(seg, copy=True)
    return str(seg), hd.seg.segread(str(seg))


def read_dicom_seg(seg: str | os.PathLike | Any, datasets: list[Any]) -> tuple[np.ndarray, dict[int, str]]:
    """A SEG (a path or an in-memory Dataset) back onto its source grid, each frame placed by its
    ImagePositionPatient.

    Returns (X, Y, Z) uint16 label values (from each segment's TrackingID "label <value>", else
    its segment number) and {value: segment label}. Raises InputError for a SEG whose frames are
    not on the source grid.
    """
    grid = source_grid(datasets)
    name, seg = _as_segmentation(seg)
    values = {int(d.SegmentNumber): _label_value(d) for d in seg.SegmentSequence}
    names = {values[int(d.SegmentNumber)]: str(d.SegmentLabel) for d in seg.SegmentSequence}
    to_voxel = np.linalg.inv(LPS_TO_RAS @ grid.affine)  # LPS mm -> (i, j, k)
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    lps = LPS_TO_RAS @ grid.affine
    expected = np.r_[lps[:3, 0] / np.linalg.norm(lps[:3, 0]), lps[:3, 1] / np.linalg.norm(lps[:3, 1])]
    if not np.allclose(orientation, expected, atol=1e-4):
        raise InputError(f"{name}: the SEG's plane orientation differs from the source series'; expected a SEG made on this series")
    pixels = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    out = np.zeros(grid.shape, np.uint16)
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        ijk = (to_voxel @ [*position, 1.0])[:3]
        k = int(round(ijk[2]))
        if not np.allclose(ijk, [0, 0, k], atol=1e-2) or not 0 <= k < grid.shape[2]:
            raise InputError(f"{name}: SEG frame {index + 1} lies off the source series' slices (voxel {np.round(ijk, 2).tolist()})")
        identification = frame.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence  # shared for one segment
        out[:, :, k][pixels[index].T > 0] = values[int(identification[0].ReferencedSegmentNumber)]
    return out, names
