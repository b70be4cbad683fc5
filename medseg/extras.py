"""Optional dependencies ("extras"): heavy packages used only at the edges, installed by `medseg[...]`.

    tracking  mlflow                              experiment tracking, model lookup by run id / name
    plots     matplotlib                          learning curves, overlays, evaluation box plots
    rtstruct  rt-utils (opencv), scikit-image     RTSTRUCT writing and reading
    itk       SimpleITK                           NRRD and MetaImage (.nrrd, .nhdr, .mha, .mhd)
    pacs      dicomweb-client, pynetdicom         `medseg pacs`: DICOMweb round trips, C-STORE receiver
    export    onnx, onnxruntime, openvino         `medseg export`, `--runtime onnxruntime|openvino`
    all       every extra above (what `make` installs)

Each edge imports its package through `require`, so a missing one is one line naming the pip
install that adds it, never a traceback from deep inside.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from medseg.errors import MedsegError

# top-level module -> (pip distribution, extra)
EXTRAS: dict[str, tuple[str, str]] = {
    "mlflow": ("mlflow", "tracking"),
    "matplotlib": ("matplotlib", "plots"),
    "rt_utils": ("rt-utils", "rtstruct"),
    "cv2": ("opencv-python", "rtstruct"),
    "skimage": ("scikit-image", "rtstruct"),
    "SimpleITK": ("SimpleITK", "itk"),
    "dicomweb_client": ("dicomweb-client", "pacs"),
    "pynetdicom": ("pynetdicom", "pacs"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "openvino": ("openvino", "export"),
    "nncf": ("nncf", "export"),
    "safetensors": ("safetensors", "hf"),
}


class MissingExtraError(MedsegError):
    """An optional dependency that this feature needs is not installed (or does not import)."""


def missing_message(module: str, extra: str | None = None) -> str:
    """"mlflow is not installed; `pip install medseg[tracking]` adds it"."""
    top = module.split(".")[0]
    dist, default_extra = EXTRAS.get(top, (top, "all"))
    return f"{dist} is not installed; `pip install medseg[{extra or default_extra}]` adds it"


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import `module` (e.g. "mlflow", "skimage.draw"); MissingExtraError in one line when it, or a
    package it needs (rt-utils needs opencv), is missing. `extra` defaults to the module's own."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or module).split(".")[0]
        if missing == module.split(".")[0] or missing in EXTRAS:
            raise MissingExtraError(missing_message(missing, extra if missing == module.split(".")[0] else None)) from None
        raise
    except ImportError as exc:  # installed but broken (e.g. opencv without its system libraries)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MissingExtraError(
            f"{module} is installed but does not import ({first}); reinstall it, e.g. `pip install --force-reinstall "
            f"medseg[{extra or EXTRAS.get(module.split('.')[0], (None, 'all'))[1]}]`"
        ) from None


def available(module: str) -> bool:
    """Whether `module` imports (`require` without the error)."""
    try:
        require(module)
    except MissingExtraError:
        return False
    return True


__all__ = ["EXTRAS", "MissingExtraError", "available", "missing_message", "require"]
