"""RTSTRUCT: one ROI per label, planar contours per slice in patient coordinates.

The mask is a `Volume` whose affine must equal the source series' grid recomputed from the
headers (`geometry.check_on_source_grid`). rt-utils makes the structure set's dataset (patient,
study, referenced series); the contours are medseg's own (`contours.mask_contours`): they follow
the voxel BOUNDARIES (a hair inside), so a planning system that counts a pixel when its centre is
inside gets the mask back, where contours through the boundary pixels' centres (rt-utils' own)
lose 8-12% of the volume. Each contour lies on, and references, the source slice at its k:
through the grid's full affine (oblique and flipped series alike), or for an irregular (tilted,
gapped) series through that slice's own position. The reader does not use rt-utils: it
rasterises the contours itself (pixel centres inside, even-odd rule) through the volume's affine.

`build_rtstruct` returns the RTSTRUCT as an in-memory Dataset; `write_rtstruct` saves it
atomically. `read_rtstruct` takes a path or a Dataset.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError, OutputError
from medseg.extras import require
from medseg.io.atomic import atomic_output
from medseg.io.dicom.geometry import check_on_source_grid
from medseg.io.dicom.series import source_datasets
from medseg.volume import LPS_TO_RAS, Volume

log = logging.getLogger(__name__)

COLOURS = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255], [255, 128, 0], [128, 0, 255]]


def build_rtstruct(
    mask: Volume,
    datasets: list[Any],
    label_names: dict[int, str],
    label_codes: dict[int, Any] | None = None,
    model_name: str = "medseg",
):
    """An (X, Y, Z) label map on the source grid as an RTSTRUCT, in memory (a pydicom Dataset).

    mask: labels as a Volume on the source series' grid (its affine is checked against the
        headers, `check_on_source_grid`). datasets: the single-frame source headers, any order;
        left unchanged; enhanced multi-frame sources are refused (contours reference
        single-frame images).
    label_codes: per label value a `LabelCode` (or its JSON dict): the ROI's identification code and
        RT ROI Interpreted Type (as declared, else ORGAN for anatomical structures, else empty).
    ROI names are the label names. Empty labels are omitted with a warning.
    """
    require("rt_utils")  # the `rtstruct` extra (rt-utils, with opencv, scikit-image): one line when missing
    require("skimage")
    from rt_utils.ds_helper import create_rtstruct_dataset

    from medseg import __version__
    from medseg.label_codes import codes_for_writing

    refuse_multiframe(datasets)
    grid = check_on_source_grid(mask, datasets, "RTSTRUCT")
    labels = np.asarray(mask.array)
    sources = source_datasets(grid.datasets)  # in k order: contours of mask[:, :, k] reference sources[k]
    ds = create_rtstruct_dataset(sources)
    ds.SeriesDescription = f"medseg {model_name}"[:64]
    ds.Manufacturer = "medseg"
    ds.ManufacturerModelName = model_name[:64]
    ds.SoftwareVersions = __version__
    for key in ("ReferringPhysicianName", "AccessionNumber", "OperatorsName", "PositionReferenceIndicator"):
        if key not in ds:  # type 2: present, may be empty
            setattr(ds, key, sources[0].get(key, ""))
    if not str(ds.get("FrameOfReferenceUID", "") or ""):
        ds.FrameOfReferenceUID = sources[0].FrameOfReferenceUID
    present = [int(k) for k in sorted(label_names) if int(k) != 0 and (labels == int(k)).any()]
    coded = codes_for_writing({k: label_names[k] for k in present}, label_codes, "RTSTRUCT")
    for k in sorted(label_names):
        if int(k) != 0 and int(k) not in present:
            log.warning("label %d (%s) is empty and is left out of the RTSTRUCT", k, label_names[k])
    if not present:
        raise OutputError("RTSTRUCT: the mask is empty (no label present); write NIfTI instead")
    affine_lps = LPS_TO_RAS @ np.asarray(grid.affine, float)
    # tilted or gapped series: each slice's contours go out through that slice's own position
    positions = None if grid.regular else np.asarray(grid.positions, float)
    for number, k in enumerate(present, start=1):
        _add_roi(ds, number, labels == k, affine_lps, positions, sources, name=str(label_names[k])[:64],
                 colour=COLOURS[(number - 1) % len(COLOURS)], description=f"medseg {__version__}, model {model_name}",
                 code=coded[k])
    _keep_contours_raw(ds)
    return ds


def write_rtstruct(
    mask: Volume,
    datasets: list[Any],
    path: str | os.PathLike,
    label_names: dict[int, str],
    label_codes: dict[int, Any] | None = None,
    model_name: str = "medseg",
) -> Path:
    """`build_rtstruct`, saved atomically to `path` (temporary name, then rename)."""
    ds = build_rtstruct(mask, datasets, label_names, label_codes, model_name=model_name)
    path = Path(path)
    with atomic_output(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def refuse_multiframe(datasets: list[Any]) -> None:
    """InputError (one line) when the source is an enhanced multi-frame object, which RTSTRUCT cannot reference."""
    for ds in datasets:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            kind = getattr(getattr(ds, "SOPClassUID", None), "name", None) or "multi-frame"
            raise InputError(
                f"RTSTRUCT: the source is an enhanced multi-frame object ({kind}, {frames} frame(s)); RTSTRUCT contours "
                "reference single-frame images; write a DICOM SEG (--format dicom-seg) or NIfTI instead"
            )


def _add_roi(ds, number: int, mask: np.ndarray, affine_lps: np.ndarray, positions: np.ndarray | None,
             sources: list[Any], *, name: str, colour: list[int], description: str, code) -> None:
    """One ROI (X, Y, Z bool mask) into the three RTSTRUCT sequences: its structure set entry, its
    boundary contours (one CLOSED_PLANAR item per contour, referencing the slice it lies on) and its
    observation (interpreted type and identification code)."""
    from pydicom.dataset import Dataset

    from medseg.io.dicom.contours import mask_contours

    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = ds.FrameOfReferenceUID
    roi.ROIName = name
    roi.ROIDescription = description[:64]
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    ds.StructureSetROISequence.append(roi)

    items = []
    for k, points in mask_contours(mask, affine_lps, positions=positions):
        image = Dataset()
        image.ReferencedSOPClassUID = sources[k].SOPClassUID
        image.ReferencedSOPInstanceUID = sources[k].SOPInstanceUID
        item = Dataset()
        item.ContourImageSequence = [image]
        item.ContourGeometricType = "CLOSED_PLANAR"
        item.NumberOfContourPoints = len(points)
        item[CONTOUR_DATA] = _raw_ds(points.ravel())
        items.append(item)
    contour = Dataset()
    contour.ROIDisplayColor = list(colour)
    contour.ContourSequence = items
    contour.ReferencedROINumber = number
    ds.ROIContourSequence.append(contour)

    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.RTROIInterpretedType = code.interpreted_type()
    observation.ROIInterpreter = ""
    observation.RTROIIdentificationCodeSequence = [_coded(code)]
    ds.RTROIObservationsSequence.append(observation)


CONTOUR_DATA = 0x30060050


def _raw_ds(values: np.ndarray):
    """A Contour Data element (DS, VM 3n) from floats, kept raw: pydicom's per-value DS objects cost
    ~50 us each, minutes for the 10^6 values of a CT's body contour. Each value fits DS's 16 characters."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    text = "\\".join(f"{v:.4f}"[:16] for v in values.tolist()).encode("ascii")
    if len(text) % 2:
        text += b" "  # DICOM values have even length; DS pads with a space
    return RawDataElement(Tag(CONTOUR_DATA), "DS", len(text), text, 0, True, True)


def _keep_contours_raw(ds) -> None:
    """Mark each contour item as already in the file's encoding, so `save_as` writes its raw Contour
    Data bytes as they are instead of parsing them back into DS values first (seconds per ROI)."""
    syntax = ds.file_meta.TransferSyntaxUID
    for roi in ds.ROIContourSequence:
        for item in roi.ContourSequence:
            item.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian, item._character_set)


def _contour_points(contour) -> np.ndarray:
    """(N, 3) float LPS mm of a contour item, parsed from the raw bytes when they are still raw."""
    element = contour.get_item(CONTOUR_DATA)
    if element is not None and isinstance(element.value, bytes):
        return np.array(element.value.split(b"\\"), dtype=float).reshape(-1, 3)
    return np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)


def _coded(code) -> Any:
    """RT ROI Identification Code Sequence item: the label's segmented property type code (the
    modifier, e.g. laterality, is kept in the ROI name and the SEG; this item has no place for it)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.type
    return item


def read_rtstruct(rtstruct: str | os.PathLike | Any, volume: Volume) -> dict[str, np.ndarray]:
    """Rasterise every ROI of an RTSTRUCT (a path or an in-memory Dataset) on `volume`'s grid:
    {ROI name: (X, Y, Z) bool}.

    Contours are mapped from patient LPS mm to voxel indices through the volume's affine; a voxel
    belongs to a contour when its centre lies inside (the RTSTRUCT convention: a contour encloses
    the area inside it), and a slice's contours are combined with the even-odd rule (holes are
    contours inside contours). Contours drawn through the centres of the boundary voxels (older
    writers) therefore read back without those voxels, as in a planning system.
    """
    import pydicom
    from pydicom.dataset import Dataset

    from medseg.io.dicom.contours import fill_polygons

    if isinstance(rtstruct, Dataset):
        name, ds = "the RTSTRUCT Dataset", rtstruct
    else:
        name = str(rtstruct)
        if not Path(rtstruct).is_file():
            raise InputError(f"{name}: no such file; expected an RTSTRUCT .dcm file")
        try:
            ds = pydicom.dcmread(name)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise InputError(f"{name}: not a readable DICOM file ({type(exc).__name__}); expected an RTSTRUCT") from None
    if ds.get("Modality") != "RTSTRUCT":
        raise InputError(f"{name}: modality {ds.get('Modality')!r}, expected RTSTRUCT")
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    to_voxel = np.linalg.inv(LPS_TO_RAS @ volume.affine)  # LPS mm -> (i, j, k)
    shape = volume.spatial_shape
    masks = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros(shape, bool)
        per_slice: dict[int, list[np.ndarray]] = {}
        for contour in roi.get("ContourSequence", []):
            points = _contour_points(contour)
            ijk = (to_voxel @ np.c_[points, np.ones(len(points))].T)[:3].T
            k = int(round(float(np.median(ijk[:, 2]))))
            if 0 <= k < shape[2]:
                per_slice.setdefault(k, []).append(ijk[:, :2])
        for k, polygons in per_slice.items():
            mask[:, :, k] = fill_polygons(polygons, shape[:2])
        masks[names[int(roi.ReferencedROINumber)]] = mask
    return masks
