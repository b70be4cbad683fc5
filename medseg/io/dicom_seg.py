"""DICOM SEG written with highdicom, referencing the source series it was predicted on.

Geometry: the mask is a `Volume` (X, Y, Z) = (columns, rows, slices along the normal) whose affine
must equal the source series' grid as recomputed from the headers (`io.dicom.source_grid`). It is
handed to highdicom as a `highdicom.Volume` (array (slices, rows, columns), LPS affine), so every
frame is placed, and matched to its source slice or multi-frame frame, by position, never by the
order of files or frames.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import GeometryError, InputError, OutputError
from medseg.io.atomic import atomic_output
from medseg.io.dicom import SourceGrid
from medseg.volume import LPS_TO_RAS, Volume

log = logging.getLogger(__name__)

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


def check_on_source_grid(mask: Volume, datasets: list[Any], what: str) -> SourceGrid:
    """The source series' grid, once `mask` is known to lie on it: same shape, spacing, origin and
    direction (so a mask flipped or permuted along any axis is refused even with the same shape).

    mask: (X, Y, Z) integer labels with their affine. Raises GeometryError (one line) otherwise.
    """
    from medseg.io.dicom import source_grid

    if not isinstance(mask, Volume):
        raise GeometryError(
            f"{what}: the mask must be a medseg Volume (labels with their affine), got {type(mask).__name__}; "
            "wrap it as Volume(labels, affine) so that its geometry can be checked"
        )
    if mask.array.ndim != 3:
        raise GeometryError(f"{what}: needs an (X, Y, Z) label map, got an array of shape {mask.array.shape}")
    grid = source_grid(datasets, f"{what} source series")
    problems = mask.geometry_differences(grid.as_volume(), atol_mm=1e-3, atol_dir=1e-4)
    if problems:
        raise GeometryError(
            f"{what}: the mask is not on the source series' voxel grid ({'; '.join(problems)}); "
            "write the mask on the grid of the series it was predicted from (same shape, voxel order and affine)"
        )
    return grid


def _highdicom_volume(labels: np.ndarray, grid: SourceGrid, frame_of_reference_uid: str):
    """(X, Y, Z) labels -> highdicom Volume: array (k, rows, columns), affine (k, row, column) -> LPS mm."""
    import highdicom as hd

    swap = np.eye(4)[[2, 1, 0, 3]]  # (k, j, i) -> (i, j, k)
    affine = LPS_TO_RAS @ grid.affine @ swap
    return hd.Volume(np.ascontiguousarray(labels.transpose(2, 1, 0)), affine, coordinate_system="PATIENT",
                     frame_of_reference_uid=frame_of_reference_uid)


def write_dicom_seg(
    mask: Volume,
    datasets: list[Any],
    path: str | os.PathLike,
    label_names: dict[int, str],
    label_codes: dict[int, Any] | None = None,
    model_name: str = "medseg",
    series_description: str = "medseg segmentation",
) -> Path:
    """Write an (X, Y, Z) label map on the source grid as a binary DICOM SEG, atomically.

    mask: labels (label values, e.g. {0, 1, 2, 4}) as a Volume on the source series' grid; its
        affine is checked against the series' headers (`check_on_source_grid`).
    datasets: the source headers (`DicomSeries.datasets`): single-frame slices in any order, or one
        enhanced multi-frame object. Frames are placed by geometry: highdicom matches each mask
        slice to the source slice or frame at the same position.
    label_codes: per label value a `medseg.label_codes.LabelCode` or its JSON dict; labels without
        one use the built-in table by name, else a generic code (with a warning).
    One segment per non-empty label (numbered 1.. in label order, TrackingID "label <value>");
    empty labels are omitted with a warning.
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
    volume = _highdicom_volume(remap[labels], grid, str(sources[0].FrameOfReferenceUID))
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


def read_dicom_seg(path: str | os.PathLike, datasets: list[Any]) -> tuple[np.ndarray, dict[int, str]]:
    """A SEG back onto its source grid, each frame placed by its ImagePositionPatient.

    Returns (X, Y, Z) uint16 label values (from each segment's TrackingID "label <value>", else
    its segment number) and {value: segment label}. Raises InputError for a SEG whose frames are
    not on the source grid.
    """
    import highdicom as hd

    from medseg.io.dicom import source_grid

    grid = source_grid(datasets)
    seg = hd.seg.segread(str(path))
    values = {int(d.SegmentNumber): _label_value(d) for d in seg.SegmentSequence}
    names = {values[int(d.SegmentNumber)]: str(d.SegmentLabel) for d in seg.SegmentSequence}
    to_voxel = np.linalg.inv(LPS_TO_RAS @ grid.affine)  # LPS mm -> (i, j, k)
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    lps = LPS_TO_RAS @ grid.affine
    expected = np.r_[lps[:3, 0] / np.linalg.norm(lps[:3, 0]), lps[:3, 1] / np.linalg.norm(lps[:3, 1])]
    if not np.allclose(orientation, expected, atol=1e-4):
        raise InputError(f"{path}: the SEG's plane orientation differs from the source series'; expected a SEG made on this series")
    pixels = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    out = np.zeros(grid.shape, np.uint16)
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        ijk = (to_voxel @ [*position, 1.0])[:3]
        k = int(round(ijk[2]))
        if not np.allclose(ijk, [0, 0, k], atol=1e-2) or not 0 <= k < grid.shape[2]:
            raise InputError(f"{path}: SEG frame {index + 1} lies off the source series' slices (voxel {np.round(ijk, 2).tolist()})")
        identification = frame.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence  # shared for one segment
        out[:, :, k][pixels[index].T > 0] = values[int(identification[0].ReferencedSegmentNumber)]
    return out, names
