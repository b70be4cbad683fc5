"""RTSTRUCT: one ROI per label, planar contours per slice in patient coordinates (rt-utils).

The mask is a `Volume` whose affine must equal the source series' grid recomputed from the
headers (`geometry.check_on_source_grid`); the builder hands rt-utils the headers sorted into
that grid's k order, so its (rows, cols, slices) mask is array[i, j, k] -> mask[j, i, k]. The
reader does not use rt-utils: it rasterises the contours itself through the volume's affine, an
independent check.

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
    require("rt_utils")  # the `rtstruct` extra (rt-utils, with opencv): one line when missing
    from rt_utils import RTStruct
    from rt_utils.ds_helper import create_rtstruct_dataset

    from medseg import __version__
    from medseg.label_codes import codes_for_writing

    refuse_multiframe(datasets)
    grid = check_on_source_grid(mask, datasets, "RTSTRUCT")
    labels = np.asarray(mask.array)
    sources = source_datasets(grid.datasets)  # in k order: rt-utils pairs mask[:, :, k] with sources[k]
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
    rtstruct = RTStruct(sources, ds)
    present = [int(k) for k in sorted(label_names) if int(k) != 0 and (labels == int(k)).any()]
    coded = codes_for_writing({k: label_names[k] for k in present}, label_codes, "RTSTRUCT")
    for k in sorted(label_names):
        if int(k) != 0 and int(k) not in present:
            log.warning("label %d (%s) is empty and is left out of the RTSTRUCT", k, label_names[k])
    for number, k in enumerate(present):
        rtstruct.add_roi(
            mask=np.ascontiguousarray((labels == k).transpose(1, 0, 2)),
            color=COLOURS[number % len(COLOURS)],
            name=str(label_names[k])[:64],
            description=f"medseg {__version__}, model {model_name}",
            roi_generation_algorithm="AUTOMATIC",
        )
        observation = rtstruct.ds.RTROIObservationsSequence[-1]
        observation.RTROIInterpretedType = coded[k].interpreted_type()
        observation.RTROIIdentificationCodeSequence = [_coded(coded[k])]
    if not present:
        raise OutputError("RTSTRUCT: the mask is empty (no label present); write NIfTI instead")
    for roi in rtstruct.ds.ROIContourSequence:  # DS values hold at most 16 characters
        for contour in roi.ContourSequence:
            contour.ContourData = [f"{v:.4f}"[:16] for v in contour.ContourData]
    return rtstruct.ds


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

    Contours are mapped from patient LPS mm to voxel indices through the volume's affine and
    filled with the even-odd rule (holes are contours inside contours).
    """
    import pydicom
    from pydicom.dataset import Dataset
    require("skimage")  # the `rtstruct` extra (scikit-image)
    from skimage.draw import line, polygon

    if isinstance(rtstruct, Dataset):
        name, ds = "the RTSTRUCT Dataset", rtstruct
    else:
        name, ds = str(rtstruct), pydicom.dcmread(str(rtstruct))
    if ds.get("Modality") != "RTSTRUCT":
        raise InputError(f"{name}: modality {ds.get('Modality')!r}, expected RTSTRUCT")
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    to_voxel = np.linalg.inv(LPS_TO_RAS @ volume.affine)  # LPS mm -> (i, j, k)
    shape = volume.spatial_shape
    masks = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros(shape, bool)
        perimeter = np.zeros(shape, bool)
        for contour in roi.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            ijk = (to_voxel @ np.c_[points, np.ones(len(points))].T)[:3].T
            k = int(round(float(np.median(ijk[:, 2]))))
            if not 0 <= k < shape[2]:
                continue
            fill = np.zeros(shape[:2], bool)
            fill[polygon(ijk[:, 0], ijk[:, 1], shape[:2])] = True
            mask[:, :, k] ^= fill
            # contours run through the centres of the ROI's own boundary pixels: add them back
            vertices = np.round(ijk[:, :2]).astype(int)
            lines = [line(*a, *b) for a, b in zip(vertices, np.roll(vertices, -1, axis=0))]
            pr, pc = np.concatenate([l[0] for l in lines]), np.concatenate([l[1] for l in lines])
            inside = (pr >= 0) & (pr < shape[0]) & (pc >= 0) & (pc < shape[1])
            perimeter[pr[inside], pc[inside], k] = True
        masks[names[int(roi.ReferencedROINumber)]] = mask | perimeter
    return masks
