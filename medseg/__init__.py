"""medseg: segmentation of volumetric medical scans, from DICOM or NIfTI in to masks out.

The Python API (docs/api.md): `medseg.read`, `medseg.load_model` -> `Predictor.segment`,
`medseg.write`, `medseg.infer` (many scans, several formats), `medseg.plan_and_preprocess`, `medseg.train`, `medseg.evaluate`. They live in `medseg.api`
and are imported on first use, so `import medseg` (and `medseg --help`) loads no torch.
"""

__version__ = "0.1.0"

_API = ("read", "read_scan", "load_model", "write", "infer", "mask_to_dicom", "plan_and_preprocess", "train", "evaluate", "Scan",
        "Segmentation")
__all__ = ["__version__", *_API, "Volume", "InteractiveSession"]


def __getattr__(name: str):
    if name in _API:
        from medseg import api

        return getattr(api, name)
    if name == "InteractiveSession":
        from medseg.interactive.session import InteractiveSession

        return InteractiveSession
    if name == "Volume":
        from medseg.volume import Volume

        return Volume
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
