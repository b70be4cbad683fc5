"""What medseg sends back to a PACS: a SEG and/or an RTSTRUCT per series, stamped with the algorithm.

`medseg.write(segmentation, format=...)` already gives new UIDs (a new series and SOP instance in
the source's study), the references to the source instances and coded segment labels. This
module adds the algorithm identification that a PACS worker needs to recognise its own output:

- name: "<dataset> <model>" from the bundle (e.g. "Hippocampus unet3d"), as the SEG's
  AlgorithmName / the RTSTRUCT's ROI derivation algorithm, and ManufacturerModelName;
- version: "<weights digest> medseg <version>": the first 12 hex digits of the SHA-256 of the
  bundles' model_best.pt (so a retrained model is a new version), and the medseg release.

`existing_outputs` reads a study's DICOMweb metadata for SEG / RTSTRUCT objects with this name and
version that reference a given series (the watch service's idempotency check).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Iterable

FORMATS = ("dicom-seg", "rtstruct")
MODALITY = {"dicom-seg": "SEG", "rtstruct": "RTSTRUCT"}


@dataclass(frozen=True)
class Algorithm:
    """How medseg's outputs name the model that made them (both values fit DICOM LO, 64 characters)."""

    name: str
    version: str
    model_version: str = ""  # the weights digest alone


def algorithm_of(predictor: Any) -> Algorithm:
    """The `Algorithm` of a `Predictor` (its bundles: dataset name, model, weights digest)."""
    from medseg import __version__
    from medseg.bundle import WEIGHTS

    first = predictor.bundles[0]
    digest = hashlib.sha256()
    for bundle in predictor.bundles:
        with open(bundle.path / WEIGHTS["best"], "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    name = f"{first.plan.dataset_name} {first.model_name}"
    model_version = digest.hexdigest()[:12]
    return Algorithm(name=name[:64], version=f"{model_version} medseg {__version__}"[:64], model_version=model_version)


def build_outputs(segmentation: Any, algorithm: Algorithm, formats: Iterable[str] = FORMATS) -> dict[str, Any]:
    """{format: pydicom Dataset} for a `Segmentation` of a DICOM series, nothing written to disk.

    Built by `medseg.write(..., path=None)`, then stamped with `algorithm` (see the module notes).
    """
    import medseg
    from medseg import __version__
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    named = dataclasses.replace(segmentation, model_name=algorithm.name)
    outputs = {}
    for fmt in formats:
        ds = medseg.write(named, None, format=fmt)
        if fmt == "dicom-seg":
            for segment in ds.SegmentSequence:
                for item in segment.get("SegmentationAlgorithmIdentificationSequence", []):
                    item.AlgorithmName = algorithm.name
                    item.AlgorithmVersion = algorithm.version
        else:
            family = codes.cid7162.ArtificialIntelligence
            for roi in ds.StructureSetROISequence:
                item = Dataset()
                code = Dataset()
                code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = family.value, family.scheme_designator, family.meaning
                item.AlgorithmFamilyCodeSequence = [code]
                item.AlgorithmName = algorithm.name
                item.AlgorithmVersion = algorithm.version
                roi.ROIDerivationAlgorithmIdentificationSequence = [item]
                roi.ROIGenerationDescription = f"{algorithm.name} {algorithm.version}"[:64]
        ds.SoftwareVersions = [f"medseg {__version__}", f"model {algorithm.model_version}"]
        ds.preamble = b"\x00" * 128  # a Part 10 file on the wire: STOW encodes with pydicom, which writes the preamble only when set
        outputs[fmt] = ds
    return outputs


def warm_up(formats: Iterable[str], predictor: Any = None) -> None:
    """Pay the one-off costs now, so that a service's first series does not wait for them: the
    SEG / RTSTRUCT writers' imports, and one prediction on a small noise volume (the reader's,
    preprocessing's and torch's lazy initialisation)."""
    import numpy as np

    from medseg.extras import require
    from medseg.volume import Volume

    require("highdicom")
    try:  # highdicom reads its tables of the standard (JSON, seconds) on first use, then keeps them
        from highdicom import _standard_utils as tables

        tables.get_sop_class_iod_map(), tables.get_iod_module_map(), tables.get_module_attribute_map()
    except Exception:  # a private helper: a newer highdicom may lack it, and then the first SEG just pays it
        pass
    if "rtstruct" in formats:
        require("rt_utils")
    if predictor is not None:
        plan = predictor.bundle.plan
        noise = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
        affine = np.diag([*[float(s) for s in plan.target_spacing], 1.0])
        predictor.segment([Volume(noise, affine) for _ in plan.channel_names])


def referenced_series(ds: Any) -> set[str]:
    """The SeriesInstanceUIDs a SEG or RTSTRUCT (Dataset, full or metadata) references."""
    found = set()
    for item in ds.get("ReferencedSeriesSequence", []) or []:  # SEG: Common Instance Reference module
        found.add(str(item.get("SeriesInstanceUID", "")))
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []) or []:  # RTSTRUCT
        for study in frame.get("RTReferencedStudySequence", []) or []:
            for series in study.get("RTReferencedSeriesSequence", []) or []:
                found.add(str(series.get("SeriesInstanceUID", "")))
    return found - {""}


def referenced_instances(ds: Any) -> set[str]:
    """The SOPInstanceUIDs of the source images a SEG or RTSTRUCT references."""
    found = set()
    for item in ds.get("ReferencedSeriesSequence", []) or []:
        found |= {str(i.ReferencedSOPInstanceUID) for i in item.get("ReferencedInstanceSequence", []) or []}
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        for study in frame.get("RTReferencedStudySequence", []) or []:
            for series in study.get("RTReferencedSeriesSequence", []) or []:
                found |= {str(i.ReferencedSOPInstanceUID) for i in series.get("ContourImageSequence", []) or []}
    return found


def algorithms_in(ds: Any) -> set[tuple[str, str]]:
    """The (name, version) pairs a SEG or RTSTRUCT (Dataset, full or metadata) carries."""
    items = []
    for segment in ds.get("SegmentSequence", []) or []:
        items += list(segment.get("SegmentationAlgorithmIdentificationSequence", []) or [])
    for roi in ds.get("StructureSetROISequence", []) or []:
        items += list(roi.get("ROIDerivationAlgorithmIdentificationSequence", []) or [])
    return {(str(i.get("AlgorithmName", "")), str(i.get("AlgorithmVersion", ""))) for i in items}


def format_of(ds: Any) -> str | None:
    """"dicom-seg" / "rtstruct" for a SEG / RTSTRUCT Dataset, else None."""
    modality = str(ds.get("Modality", ""))
    return next((fmt for fmt, m in MODALITY.items() if m == modality), None)


__all__ = ["Algorithm", "FORMATS", "MODALITY", "algorithm_of", "algorithms_in", "build_outputs", "format_of",
           "referenced_instances", "referenced_series", "warm_up"]
