"""NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) to and from `Volume`, through SimpleITK.

ITK's geometry is LPS+ with a (Z, Y, X) array; it is converted to RAS+ and (X, Y, Z) here, once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.extras import require
from medseg.io.atomic import atomic_output
from medseg.volume import LPS_TO_RAS, Volume, grid_problem


def read_itk(path: Path) -> Volume:
    """Read any SimpleITK-readable 2D/3D image (vector pixels become channels: (C, X, Y, Z))."""
    sitk = require("SimpleITK")  # the `itk` extra

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise InputError(f"{path}: not a readable image ({first_line}); check the file is complete") from None
    return volume_from_sitk(image, path)


def volume_from_sitk(image, path: Path | str = "image") -> Volume:
    sitk = require("SimpleITK")  # the `itk` extra

    dim = image.GetDimension()
    if dim not in (2, 3):
        raise InputError(f"{path}: found a {dim}D image; expected a 2D or 3D scan")
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X[, C]) or (Y, X[, C])
    vector = image.GetNumberOfComponentsPerPixel() > 1
    if dim == 2:
        array = array[None]
    array = np.moveaxis(array, [0, 1, 2], [2, 1, 0]) if not vector else np.moveaxis(array, [0, 1, 2, 3], [3, 2, 1, 0])
    spacing = np.ones(3)
    origin = np.zeros(3)
    direction = np.eye(3)
    spacing[:dim] = image.GetSpacing()
    origin[:dim] = image.GetOrigin()
    direction[:dim, :dim] = np.asarray(image.GetDirection()).reshape(dim, dim)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * spacing
    affine_lps[:3, 3] = origin
    problem = grid_problem(affine_lps)
    if problem is not None:
        raise InputError(f"{path}: {problem}; expected positive voxel sizes and a valid orientation; fix the header (spacing, direction)")
    return Volume(np.ascontiguousarray(array), LPS_TO_RAS @ affine_lps)


def volume_to_sitk(volume: Volume):
    """A SimpleITK image with `volume`'s voxels and exact geometry (LPS+)."""
    sitk = require("SimpleITK")  # the `itk` extra

    array = volume.array
    vector = array.ndim == 4
    array = np.moveaxis(array, [1, 2, 3, 0], [2, 1, 0, 3]) if vector else np.transpose(array, (2, 1, 0))
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=vector)
    affine_lps = LPS_TO_RAS @ volume.affine
    spacing = volume.spacing
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in affine_lps[:3, 3]])
    image.SetDirection([float(d) for d in (affine_lps[:3, :3] / spacing).ravel()])
    return image


def write_itk(volume: Volume, path: Path) -> None:
    """Write `volume` as NRRD or MetaImage (by suffix), compressed, atomically."""
    sitk = require("SimpleITK")  # the `itk` extra

    image = volume_to_sitk(volume)
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
