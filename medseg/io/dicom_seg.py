"""DICOM SEG written with highdicom, referencing the source series it was predicted on.

Geometry: a label array (X, Y, Z) on the source grid has X = columns, Y = rows, Z = the order of
`DicomSeries.datasets`; highdicom wants one frame per source slice, (slices, rows, cols), i.e.
array[i, j, k] -> mask[k, j, i].
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError, OutputError
from medseg.io.atomic import atomic_output

log = logging.getLogger(__name__)

# SNOMED CT: generic codes used when the bundle gives none for a label
DEFAULT_CATEGORY = ("91723000", "SCT", "Anatomical Structure")
DEFAULT_TYPE = ("85756007", "SCT", "Tissue")


TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


def source_datasets(datasets: list[Any]) -> list[Any]:
    """Copies of the source headers with empty identifying UIDs filled in, so they can be referenced.

    Some anonymised series keep SOPClassUID / SOPInstanceUID only in the file meta and have empty
    Study/Series UIDs: the former are taken from the file meta, the latter derived
    deterministically from the series' content (the same for every write from the same series).
    """
    from pydicom.uid import generate_uid

    fixed = [copy.copy(ds) for ds in datasets]  # shallow: only top-level elements are replaced
    seed = [str(fixed[0].get("FrameOfReferenceUID", "")), *(str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")) for ds in fixed if hasattr(ds, "file_meta"))]
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not str(fixed[0].get(key, "") or ""):
            log.warning("the source series has no %s; a UID derived from its instances is used", key)
            uid = generate_uid(entropy_srcs=[key, *seed])
            for ds in fixed:
                setattr(ds, key, uid)
    for ds in fixed:
        for key in TYPE2_COPIED:  # required (possibly empty) in any derived object
            if key not in ds:
                setattr(ds, key, "")
        for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(key, "") or "") and hasattr(ds, "file_meta"):
                setattr(ds, key, ds.file_meta.get(meta_key))
    return fixed


def check_on_source_grid(labels: np.ndarray, datasets: list[Any], what: str) -> None:
    if labels.ndim != 3 or not datasets:
        raise InputError(f"{what} needs an (X, Y, Z) label map and its source DICOM series; got shape {labels.shape}")
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    expected = (cols, rows, len(datasets))
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        expected = (cols, rows, int(datasets[0].NumberOfFrames))
    if tuple(labels.shape) != expected:
        raise InputError(
            f"{what}: the mask has shape {labels.shape} but the source series is {expected} (columns, rows, slices); "
            "write the mask on the grid of the series it was predicted from"
        )


def _code(value) -> Any:
    from pydicom.sr.coding import Code

    if isinstance(value, dict):
        return Code(value["value"], value["scheme"], value["meaning"])
    return Code(*[str(v) for v in value])


def write_dicom_seg(
    labels: np.ndarray,
    datasets: list[Any],
    path: str | os.PathLike,
    label_names: dict[int, str],
    label_codes: dict[int, dict] | None = None,
    model_name: str = "medseg",
    series_description: str = "medseg segmentation",
) -> Path:
    """Write an (X, Y, Z) integer label map on the source grid as a binary DICOM SEG, atomically.

    datasets: the source headers in the volume's k order (`DicomSeries.datasets`).
    label_codes: per label {"category": [code, scheme, meaning], "type": [...]}.
    One segment per non-empty label; empty labels are omitted with a warning.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medseg import __version__

    check_on_source_grid(labels, datasets, "DICOM SEG")
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
    label_codes = label_codes or {}
    descriptions = []
    remap = np.zeros(max(present) + 1, dtype=np.uint16)
    for number, k in enumerate(kept, start=1):
        remap[k] = number
        code = label_codes.get(k, {})
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(label_names[k])[:64],
                segmented_property_category=_code(code.get("category", DEFAULT_CATEGORY)),
                segmented_property_type=_code(code.get("type", DEFAULT_TYPE)),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=f"label {k}",
                tracking_uid=hd.UID(),
            )
        )
    mask = np.ascontiguousarray(remap[labels].transpose(2, 1, 0))  # (slices, rows, cols)
    sources = source_datasets(datasets)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
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
    path = Path(path)
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
    return path


def read_dicom_seg(path: str | os.PathLike, datasets: list[Any]) -> tuple[np.ndarray, dict[int, str]]:
    """A SEG back onto its source grid: (X, Y, Z) uint16 of segment numbers, and {number: label}."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    uids = [str(ds.SOPInstanceUID) for ds in source_datasets(datasets)]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True, dtype=np.uint16)
    names = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    return np.ascontiguousarray(pixels.transpose(2, 1, 0)), names
