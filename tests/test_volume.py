import numpy as np
import pytest

from medseg.errors import GeometryError
from medseg.volume import Volume, affine_from_geometry


def oblique_affine(spacing=(0.8, 1.2, 3.0), origin=(10.0, -20.0, 5.0), angle=0.3):
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([-1, 1, 1])  # oblique and flipped
    return affine_from_geometry(spacing, origin, rotation)


def test_geometry_properties():
    affine = oblique_affine()
    vol = Volume(np.zeros((4, 5, 6), np.float32), affine)
    np.testing.assert_allclose(vol.spacing, [0.8, 1.2, 3.0])
    np.testing.assert_allclose(vol.origin, [10.0, -20.0, 5.0])
    np.testing.assert_allclose(vol.direction.T @ vol.direction, np.eye(3), atol=1e-12)
    assert vol.spatial_shape == (4, 5, 6) and vol.num_channels == 1
    assert Volume(np.zeros((2, 4, 5, 6)), affine).num_channels == 2


def test_geometry_differences_name_each_mismatch():
    a = Volume(np.zeros((4, 5, 6)), oblique_affine())
    assert a.same_geometry(Volume(np.ones((4, 5, 6)), oblique_affine()))
    b = Volume(np.zeros((4, 5, 7)), oblique_affine(spacing=(0.8, 1.2, 2.0), origin=(0, 0, 0)))
    problems = " ".join(a.geometry_differences(b))
    assert "shape" in problems and "spacing" in problems and "origin" in problems
    c = Volume(np.zeros((4, 5, 6)), oblique_affine(angle=0.5))
    differences = a.geometry_differences(c)
    assert len(differences) == 1 and differences[0].startswith("direction")


def test_reoriented_to_ras_keeps_every_voxel_in_place():
    rng = np.random.default_rng(0)
    affine = affine_from_geometry((1.0, 2.0, 3.0), (5.0, 6.0, 7.0), np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]]))
    vol = Volume(rng.random((3, 4, 5)), affine)
    assert vol.orientation == "PSL"
    ras = vol.reoriented("RAS")
    assert ras.orientation == "RAS"
    # every voxel keeps its world position and value
    for index in [(0, 0, 0), (2, 3, 4), (1, 2, 3)]:
        world = affine @ np.array([*index, 1.0])
        ras_index = np.linalg.solve(ras.affine, world)[:3]
        np.testing.assert_allclose(ras_index, np.round(ras_index), atol=1e-9)
        assert ras.array[tuple(np.round(ras_index).astype(int))] == vol.array[index]
    back = ras.reoriented("PSL")
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-12)


def test_with_array_refuses_another_grid():
    vol = Volume(np.zeros((4, 5, 6)), np.eye(4))
    assert vol.with_array(np.ones((2, 4, 5, 6))).num_channels == 2
    with pytest.raises(GeometryError):
        vol.with_array(np.zeros((4, 5, 7)))
