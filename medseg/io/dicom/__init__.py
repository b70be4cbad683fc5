"""DICOM in and out, one module per DICOM object (as highdicom is laid out).

- `series`: image series discovery (folders, files or in-memory Datasets), series choice, reading
  into a `Volume`; the source headers kept for SEG/RTSTRUCT export.
- `geometry`: slice sorting along the normal, spacing, tilt/gap detection and resampling, the
  source grid that derived objects must lie on.
- `pixels`: frames of single- and multi-frame objects, pixel decoding and rescale.
- `seg`: DICOM SEG build/write/read (highdicom).
- `rtstruct`: RTSTRUCT build/write/read (rt-utils for contours out, own rasteriser back).

Readers take a path or in-memory pydicom Datasets; `build_*` return Datasets without touching the
disk, `write_*` save them atomically.
"""

from medseg.io.dicom.geometry import SourceGrid, check_on_source_grid, source_grid
from medseg.io.dicom.reslice import to_source_slices
from medseg.io.dicom.rtstruct import build_rtstruct, read_rtstruct, refuse_multiframe, write_rtstruct
from medseg.io.dicom.seg import build_dicom_seg, read_dicom_seg, write_dicom_seg
from medseg.io.dicom.series import (
    DicomSeries,
    SeriesSummary,
    list_series,
    load_dicom_series,
    read_dicom,
    source_datasets,
)

__all__ = [
    "DicomSeries",
    "SeriesSummary",
    "SourceGrid",
    "build_dicom_seg",
    "build_rtstruct",
    "check_on_source_grid",
    "list_series",
    "load_dicom_series",
    "read_dicom",
    "read_dicom_seg",
    "read_rtstruct",
    "refuse_multiframe",
    "source_datasets",
    "source_grid",
    "to_source_slices",
    "write_dicom_seg",
    "write_rtstruct",
]
