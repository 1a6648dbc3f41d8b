from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.image import imread

from wspet.mip import save_mip_png, to_ras

LPS_GRID = np.array([  # the layout of the sts-fdg-pet files: i to the left, j posterior
    [-4.0, 0.0, 0.0, 20.0],
    [0.0, -4.0, 0.0, 80.0],
    [0.0, 0.0, 3.0, -300.0],
    [0.0, 0.0, 0.0, 1.0],
])


def red_pixels(png: np.ndarray) -> int:
    r, g, b = png[..., 0], png[..., 1], png[..., 2]
    return int(np.count_nonzero((r > 0.7) & (g < 0.35) & (b < 0.35)))


def test_png_is_written_with_coloured_outlines(tmp_path):
    backend = matplotlib.get_backend()
    suv = np.full((24, 20, 30), 0.8, np.float32)
    mask = np.zeros(suv.shape, np.uint8)
    mask[8:14, 6:12, 10:18] = 1
    suv[mask > 0] = 6.0
    path = save_mip_png(suv, mask, LPS_GRID, tmp_path / "figs" / "case.png", title="case")
    png = imread(path)
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 100
    assert red_pixels(png) > 20
    assert png[..., :3].min() < 0.2  # the hot lesion is drawn dark
    assert matplotlib.get_backend() == backend
    assert not list(path.parent.glob(".*"))  # no temporary left behind


def test_without_lesions_there_is_no_outline(tmp_path):
    suv = np.random.default_rng(0).uniform(0, 3, (16, 16, 16)).astype(np.float32)
    png = imread(save_mip_png(suv, np.zeros(suv.shape), np.eye(4), tmp_path / "a.png"))
    assert red_pixels(png) == 0
    png = imread(save_mip_png(suv, None, np.eye(4), tmp_path / "b.png"))
    assert red_pixels(png) == 0


def test_to_ras_flips_lps_axes_and_permutes_spacing():
    array = np.zeros((3, 4, 5))
    array[0, 0, 0] = 1.0  # j runs to the left and i to the back: voxel 0 is the most right and anterior...
    affine = np.array([[0.0, -2.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0, 0, 0, 1.0]])
    ras, spacing = to_ras(array, affine)
    assert ras.shape == (4, 3, 5) and spacing == (2.0, 1.0, 3.0)
    assert ras[3, 2, 0] == 1.0  # ...is last along R and A in RAS order


def test_mismatched_mask_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"mask shape \(4, 4, 3\) != suv shape \(4, 4, 4\)"):
        save_mip_png(np.ones((4, 4, 4)), np.ones((4, 4, 3)), np.eye(4), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("shape", [(1, 1, 2), (1, 5, 1), (3, 1, 4)])
def test_volumes_one_voxel_thin_still_get_their_outlines(tmp_path, shape):
    suv = np.linspace(1.0, 2.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    mask = np.ones(shape, np.uint8)
    path = save_mip_png(suv, mask, LPS_GRID, tmp_path / "thin.png")
    assert red_pixels(imread(path)) > 0
