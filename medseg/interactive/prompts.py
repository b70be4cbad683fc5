"""Prompts in the scan's coordinates, mapped onto the network grid and encoded as input channels.

Coordinates: millimetres in RAS (as `Volume.affine`; `space="LPS"` for DICOM patient coordinates)
or voxel indices (i, j, k) of the original scan (`space="voxel"`). A prompt file (JSON):

    {"space": "RAS", "objects": [
        {"label": 1, "points": [{"xyz": [12.5, -30.0, 8.0], "positive": true}],
         "box": {"min": [0, -40, 0], "max": [20, -20, 16]}}]}

Channels (PROMPT_CHANNELS = 4, on the preprocessed grid, float32 in [0, 1]): 0 positive points,
1 negative points (balls of `radius_mm`), 2 the box (filled), 3 the previous mask.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError

SPACES = ("RAS", "LPS", "voxel")
PROMPT_CHANNELS = 4  # positive points, negative points, box, previous mask
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Point:
    xyz: tuple[float, float, float]
    positive: bool = True


@dataclass
class Box:
    min: tuple[float, float, float]
    max: tuple[float, float, float]


@dataclass
class ObjectPrompts:
    """The prompts of one object, in one coordinate space; `label`: the value its mask is written with."""

    label: int = 1
    points: list[Point] = field(default_factory=list)
    box: Box | None = None
    space: str = "RAS"


def to_ras(xyz, space: str, affine: np.ndarray) -> np.ndarray:
    """One coordinate of `space` -> RAS mm (voxel indices through the scan's affine)."""
    xyz = np.asarray(xyz, np.float64)
    if space == "RAS":
        return xyz
    if space == "LPS":
        return LPS_TO_RAS @ xyz
    if space == "voxel":
        return (np.asarray(affine) @ np.r_[xyz, 1.0])[:3]
    raise InputError(f"prompt space {space!r} is unknown; use one of {', '.join(SPACES)}")


def to_grid(ras_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS mm -> continuous voxel coordinates of the grid with `affine` (voxel -> RAS)."""
    return (np.linalg.inv(np.asarray(affine, np.float64)) @ np.r_[ras_mm, 1.0])[:3]


def check_inside(voxel: np.ndarray, shape, what: str, source: str) -> None:
    """A prompt must fall inside the scan: voxel coordinates within [-0.5, n - 0.5] per axis."""
    if np.any(voxel < -0.5) or np.any(voxel > np.asarray(shape) - 0.5):
        raise InputError(f"{source}: {what} lies outside the scan (voxel {np.round(voxel, 1).tolist()} of a "
                         f"{'x'.join(map(str, shape))} grid); give coordinates inside the scan, in its space (RAS mm by default)")


def load_prompts(path: str | os.PathLike) -> list[ObjectPrompts]:
    """Read a prompt file (module docstring); every error names the file and the entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such prompt file; check the path") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from None
    return parse_prompts(data, str(path))


def parse_prompts(data, source: str = "prompts") -> list[ObjectPrompts]:
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list) or not data["objects"]:
        raise InputError(f"{source}: expected {{\"space\": \"RAS\", \"objects\": [{{\"label\": 1, \"points\": [...]}}]}} "
                         "with at least one object")
    space = data.get("space", "RAS")
    if space not in SPACES:
        raise InputError(f"{source}: space {space!r} is unknown; use one of {', '.join(SPACES)}")
    objects = []
    for n, obj in enumerate(data["objects"]):
        where = f"{source}: object {n}"
        try:
            points = [Point(tuple(map(float, p["xyz"])), bool(p.get("positive", True))) for p in obj.get("points", [])]
            box = obj.get("box")
            box = Box(tuple(map(float, box["min"])), tuple(map(float, box["max"]))) if box else None
            label = int(obj.get("label", 1))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: points need \"xyz\": [x, y, z] (and \"positive\"), a box \"min\" and \"max\"; "
                             "fix the entry") from None
        if any(len(p.xyz) != 3 for p in points) or (box and (len(box.min) != 3 or len(box.max) != 3)):
            raise InputError(f"{where}: coordinates need three numbers [x, y, z]")
        if not points and box is None:
            raise InputError(f"{where}: has neither points nor a box; give at least one prompt")
        if not 1 <= label <= 65535:
            raise InputError(f"{where}: label {label} is out of range; use 1..65535")
        objects.append(ObjectPrompts(label, points, box, space))
    return objects


def encode(prompts: ObjectPrompts, original_affine: np.ndarray, original_shape, grid_affine: np.ndarray, grid_shape,
           *, radius_mm: float = 2.0, previous: np.ndarray | None = None, source: str = "prompt") -> np.ndarray:
    """Prompt channels (PROMPT_CHANNELS, *grid_shape) float32 on a grid (`grid_affine`: voxel -> RAS;
    the network grid, `CaseProperties.resampled_affine`). Points outside the original scan are refused.
    previous: the previous mask on that grid (X, Y, Z) bool/float (channel 3)."""
    channels = np.zeros((PROMPT_CHANNELS, *grid_shape), np.float32)
    spacing = np.linalg.norm(np.asarray(grid_affine)[:3, :3], axis=0)
    for n, point in enumerate(prompts.points):
        ras = to_ras(point.xyz, prompts.space, original_affine)
        check_inside(to_grid(ras, original_affine), original_shape, f"point {n} {list(point.xyz)}", source)
        paint_ball(channels[0 if point.positive else 1], to_grid(ras, grid_affine), radius_mm, spacing)
    if previous is not None:
        channels[3] = np.asarray(previous, np.float32)
    if prompts.box is not None:
        corners = [to_ras(c, prompts.space, original_affine) for c in (prompts.box.min, prompts.box.max)]
        for c, name in zip(corners, ("min", "max")):
            check_inside(to_grid(c, original_affine), original_shape, f"box {name} corner", source)
        grid = np.array([to_grid(c, grid_affine) for c in corners])
        lo = np.clip(np.floor(grid.min(0) + 0.5).astype(int), 0, grid_shape)
        hi = np.clip(np.floor(grid.max(0) + 0.5).astype(int) + 1, 0, grid_shape)
        channels[2][tuple(slice(l, h) for l, h in zip(lo, hi))] = 1.0
    return channels


def paint_ball(channel: np.ndarray, centre, radius_mm: float, spacing) -> None:
    """Set to 1 the voxels of `channel` (X, Y, Z) within `radius_mm` of `centre` (continuous voxel
    coordinates), and always the voxel nearest to it when it lies on the grid (a click is never lost
    to a coarse grid); computed in the ball's bounding box only."""
    shape = np.asarray(channel.shape)
    centre, spacing = np.asarray(centre, np.float64), np.asarray(spacing, np.float64)
    reach = np.maximum(np.ceil(radius_mm / spacing), 1).astype(int)
    base = np.floor(centre).astype(int)
    lo, hi = np.maximum(base - reach, 0), np.minimum(base + reach + 2, shape)
    if np.any(hi <= lo):
        return  # outside this grid (e.g. in the background a crop removed)
    sub = np.meshgrid(*[np.arange(l, h) for l, h in zip(lo, hi)], indexing="ij")
    dist = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(sub, centre, spacing)))
    box = tuple(slice(l, h) for l, h in zip(lo, hi))
    channel[box] = np.maximum(channel[box], (dist <= radius_mm).astype(channel.dtype))
    nearest = np.round(centre).astype(int)
    if np.all(nearest >= 0) and np.all(nearest < shape):
        channel[tuple(nearest)] = 1
