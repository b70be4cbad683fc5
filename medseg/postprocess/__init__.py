"""Post-processing of label maps, stored as data: a JSON list of steps `{"name": ..., "params": {...}}`.

```
[{"name": "remove_small_components", "params": {"min_mm3": 50}},
 {"name": "keep_largest_component", "params": {"classes": [1]}}]
```
`apply_steps(labels, steps)` runs them in order. `STEPS` is the registry (name -> function
`(labels (X, Y, Z) int, spacing (3,) mm, **params) -> labels`). Never pickles.
"""

from __future__ import annotations

import difflib
from typing import Callable, Iterable

import numpy as np
from scipy import ndimage

from medseg.errors import ConfigError
from medseg.volume import Volume


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (1, 2, 3):
        raise ConfigError(f"connectivity {connectivity} is invalid; use 1 (faces), 2 (edges) or 3 (corners)")
    return ndimage.generate_binary_structure(3, connectivity)


def _classes(labels: np.ndarray, classes: Iterable[int] | None) -> list[int]:
    present = [int(c) for c in np.unique(labels) if c != 0]
    return present if classes is None else [int(c) for c in classes if int(c) in present]


def keep_largest_component(labels: np.ndarray, spacing, classes=None, connectivity: int = 3, together: bool = False) -> np.ndarray:
    """Per class, keep only its largest connected component; the rest becomes background.

    together: the chosen classes (all foreground by default) form one mask; only its largest
    component survives, with its voxels' classes unchanged (nnU-Net's "all foreground" step).
    """
    out = labels.copy()
    if together:
        chosen = _classes(labels, classes)
        components, n = ndimage.label(np.isin(labels, chosen), structure=_structure(connectivity))
        if n > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            out[(components != 0) & (components != int(sizes.argmax()))] = 0
        return out
    for c in _classes(labels, classes):
        components, n = ndimage.label(labels == c, structure=_structure(connectivity))
        if n > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            out[(components != 0) & (components != int(sizes.argmax()))] = 0
    return out


def remove_small_components(
    labels: np.ndarray, spacing, min_voxels: int | None = None, min_mm3: float | None = None, classes=None, connectivity: int = 3
) -> np.ndarray:
    """Per class, remove components with fewer than `min_voxels` voxels or less than `min_mm3` volume."""
    if (min_voxels is None) == (min_mm3 is None):
        raise ConfigError("remove_small_components needs exactly one of min_voxels or min_mm3 in its params")
    threshold = min_voxels if min_voxels is not None else min_mm3 / float(np.prod(spacing))
    out = labels.copy()
    for c in _classes(labels, classes):
        components, n = ndimage.label(labels == c, structure=_structure(connectivity))
        sizes = np.bincount(components.ravel())
        small = np.flatnonzero(sizes < threshold)
        small = small[small != 0]
        if small.size:
            out[np.isin(components, small)] = 0
    return out


def fill_holes(labels: np.ndarray, spacing, classes=None) -> np.ndarray:
    """Per class, fill enclosed background cavities (3D); voxels of other classes are left alone."""
    out = labels.copy()
    for c in _classes(labels, classes):
        filled = ndimage.binary_fill_holes(labels == c)
        out[filled & (out == 0)] = c
    return out


def instances(labels: np.ndarray, spacing, classes=None, connectivity: int = 3) -> np.ndarray:
    """Connected-component instance ids 1..N over the chosen classes (all foreground by default), uint16."""
    chosen = _classes(labels, classes)
    components, n = ndimage.label(np.isin(labels, chosen), structure=_structure(connectivity))
    if n > np.iinfo(np.uint16).max:
        raise ConfigError(f"{n} instances do not fit uint16; remove small components first")
    return components.astype(np.uint16)


STEPS: dict[str, Callable[..., np.ndarray]] = {
    "keep_largest_component": keep_largest_component,
    "remove_small_components": remove_small_components,
    "fill_holes": fill_holes,
    "instances": instances,
}


def get_step(name: str) -> Callable[..., np.ndarray]:
    if name not in STEPS:
        close = difflib.get_close_matches(name, STEPS, n=1)
        hint = f" did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown post-processing step '{name}';{hint} Known: {', '.join(STEPS)}")
    return STEPS[name]


def validate_steps(steps: list[dict]) -> list[dict]:
    """Check the `{name, params}` shape and the names; return the steps with `params` filled in."""
    checked = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or "name" not in step or set(step) - {"name", "params"}:
            raise ConfigError(f"post-processing step {i} is {step!r}; expected {{'name': ..., 'params': {{...}}}}")
        get_step(step["name"])
        params = step.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"post-processing step {i} ('{step['name']}'): params must be a mapping, got {type(params).__name__}")
        checked.append({"name": step["name"], "params": params})
    return checked


def apply_steps(labels: Volume, steps: list[dict]) -> Volume:
    """Run the steps in order on an (X, Y, Z) integer label Volume; returns a new Volume on the same grid."""
    if labels.array.ndim != 3:
        raise ConfigError(f"post-processing needs an (X, Y, Z) label map, got shape {labels.array.shape}")
    array = labels.array
    for step in validate_steps(steps):
        try:
            array = get_step(step["name"])(array, labels.spacing, **step["params"])
        except TypeError as exc:
            raise ConfigError(f"post-processing step '{step['name']}': bad params {step['params']} ({exc})") from None
    return labels.with_array(array)
