"""`Volume`: a voxel array with its place in patient space.

Conventions used everywhere in medseg:
- `array` is indexed (X, Y, Z) = (i, j, k) for one channel, or (C, X, Y, Z) for several;
- `affine` is a 4x4 matrix mapping voxel indices (i, j, k, 1) to RAS+ millimetres (+x towards the
  patient's Right, +y Anterior, +z Superior), the NIfTI/nibabel convention. DICOM and ITK use LPS+;
  readers convert once, at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from medseg.errors import GeometryError


@dataclass(frozen=True)
class VolumeMeta:
    """Non-identifying facts about where a volume came from. Never holds patient data."""

    modality: str | None = None
    series_uid: str | None = None
    series_description: str | None = None


@dataclass
class Volume:
    """An image or mask on a voxel grid.

    array:  (X, Y, Z) or (C, X, Y, Z), any dtype.
    affine: (4, 4) float64, voxel index -> RAS+ mm.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: VolumeMeta = field(default_factory=VolumeMeta)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise GeometryError(f"affine must be 4x4, got shape {self.affine.shape}")
        if self.array.ndim not in (3, 4):
            raise GeometryError(
                f"a volume must be (X, Y, Z) or (C, X, Y, Z), got an array of shape {self.array.shape}"
            )

    # --- shape -------------------------------------------------------------------------------
    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[-3:])  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        return 1 if self.array.ndim == 3 else int(self.array.shape[0])

    # --- geometry ----------------------------------------------------------------------------
    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm, shape (3,)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """RAS mm position of the centre of voxel (0, 0, 0), shape (3,)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """Unit RAS direction of each voxel axis as columns, shape (3, 3)."""
        return self.affine[:3, :3] / self.spacing

    @property
    def orientation(self) -> str:
        """Three-letter code of where each voxel axis points, e.g. 'RAS' or 'LPS'."""
        return orientation_code(self.affine)

    def with_array(self, array: np.ndarray) -> "Volume":
        """The same grid and metadata holding another array of the same spatial shape."""
        if tuple(array.shape[-3:]) != self.spatial_shape:
            raise GeometryError(
                f"array of spatial shape {tuple(array.shape[-3:])} does not fit a grid of {self.spatial_shape}"
            )
        return replace(self, array=array)

    def geometry_differences(self, other: "Volume", atol_mm: float = 1e-3, atol_dir: float = 1e-4) -> list[str]:
        """Human-readable differences between two voxel grids; empty when they match.

        Spacing and origin are compared in mm (atol_mm), directions as unit vectors (atol_dir).
        """
        problems = []
        if self.spatial_shape != other.spatial_shape:
            problems.append(f"shape {self.spatial_shape} vs {other.spatial_shape}")
        if not np.allclose(self.spacing, other.spacing, atol=atol_mm):
            problems.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)} mm")
        if not np.allclose(self.origin, other.origin, atol=atol_mm):
            problems.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)} mm")
        if not np.allclose(self.direction, other.direction, atol=atol_dir):
            problems.append(f"direction {self.orientation} vs {other.orientation}")
        return problems

    def same_geometry(self, other: "Volume", atol_mm: float = 1e-3, atol_dir: float = 1e-4) -> bool:
        return not self.geometry_differences(other, atol_mm, atol_dir)

    def reoriented(self, target: str = "RAS") -> "Volume":
        """The same voxels, with axes permuted and flipped so they point as `target` says.

        Exact (no interpolation): only transposes and flips, with the affine updated to match.
        The array is a copy in the input's memory order (positive strides), not necessarily
        C-contiguous: a NIfTI volume is Fortran-ordered, and a C-ordered copy of a 512x512x300
        CT is a transposing copy that took 1.1 s against 0.04 s for this one.
        """
        import nibabel.orientations as nio

        current = nio.io_orientation(self.affine)
        wanted = nio.axcodes2ornt(tuple(target))
        transform = nio.ornt_transform(current, wanted)
        if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
            return self
        spatial = self.array if self.array.ndim == 3 else np.moveaxis(self.array, 0, -1)
        moved = nio.apply_orientation(spatial, transform)
        if self.array.ndim == 4:
            moved = np.moveaxis(moved, -1, 0)
        affine = self.affine @ nio.inv_ornt_aff(transform, self.spatial_shape)
        return Volume(np.array(moved, order="K"), affine, self.meta)


def grid_problem(affine: np.ndarray) -> str | None:
    """What makes `affine` unusable as a voxel grid (NaN/Inf entries, a zero or degenerate voxel axis), or None."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        return "its affine holds NaN or Inf values"
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if (spacing <= 1e-8).any():
        return f"its voxel spacing ({', '.join(f'{s:.4g}' for s in spacing)}) mm has a zero axis"
    if abs(np.linalg.det(affine[:3, :3] / spacing)) < 1e-6:
        return "its voxel axes are parallel (the affine is singular)"
    return None


def orientation_code(affine: np.ndarray) -> str:
    """'RAS', 'LPS', ... for the closest axis-aligned orientation of `affine` (RAS+ world)."""
    import nibabel.orientations as nio

    return "".join(c if c is not None else "?" for c in nio.aff2axcodes(affine))


def affine_from_geometry(spacing, origin, direction) -> np.ndarray:
    """4x4 RAS affine from spacing (3,), origin (3,) and unit direction columns (3, 3)."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = origin
    return affine


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Flip x and y: turns an LPS (DICOM/ITK) affine into RAS, and back (it is its own inverse)."""


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
