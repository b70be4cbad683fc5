"""NIfTI (.nii, .nii.gz) to and from `Volume`, through nibabel."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_output
from medseg.volume import Volume, grid_problem


def read_nifti(path: Path) -> Volume:
    """Read a NIfTI file. 4D (X, Y, Z, C) images become (C, X, Y, Z); 2D images get Z = 1.

    The affine is nibabel's choice (sform if set, else qform), already RAS+ mm. Scaling
    (scl_slope/scl_inter) is applied; unscaled integer data keeps its dtype.
    """
    import nibabel as nib

    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise InputError(
            f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc}); "
            "check that the file is complete and not truncated"
        ) from None
    if np.iscomplexobj(array):
        raise InputError(f"{path}: complex-valued voxels ({array.dtype}); expected real intensities; save the magnitude image instead")
    array = _to_medseg_layout(array, path)
    problem = grid_problem(image.affine)
    if problem is not None:
        raise InputError(f"{path}: {problem}; expected positive voxel sizes and a valid orientation; fix the header (pixdim, qform/sform)")
    return Volume(array, image.affine)


def _to_medseg_layout(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        return array
    if array.ndim == 5 and array.shape[3] == 1:  # (X, Y, Z, 1, C): NIfTI's vector intent
        array = array[:, :, :, 0, :]
    if array.ndim == 4:
        if array.shape[3] == 1:
            return array[..., 0]
        return np.moveaxis(array, 3, 0)
    raise InputError(f"{path}: found a {array.ndim}D NIfTI of shape {array.shape}; expected a 3D scan or 3D+channels")


def write_nifti(volume: Volume, path: Path) -> None:
    """Write `volume` with qform and sform both set to its affine (codes: scanner), atomically."""
    import nibabel as nib

    array = volume.array if volume.array.ndim == 3 else np.moveaxis(volume.array, 0, -1)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    image = nib.Nifti1Image(array, volume.affine)
    image.set_sform(volume.affine, code=1)
    image.set_qform(volume.affine, code=1)
    image.header.set_xyzt_units("mm")
    with atomic_output(path) as tmp:
        nib.save(image, str(tmp))
