from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.contour import ContourSet
from matplotlib.image import imread

from wspet.inference.mip import SUV_LABEL, axis_ends, mask_warnings, mip_figure, save_mip_png, to_ras

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


RAS_GRID = np.diag([4.0, 4.0, 3.0, 1.0])


def hot_x(ax) -> np.ndarray:
    """Data x (mm) of the panel's image columns hotter than SUV 5."""
    (image,) = ax.images
    data = np.asarray(image.get_array())  # (vertical, horizontal)
    x0, x1 = image.get_extent()[:2]
    columns = np.nonzero(data.max(axis=0) > 5)[0]
    return x0 + (columns + 0.5) * (x1 - x0) / data.shape[1]


def outline_x(ax) -> np.ndarray:
    (contours,) = [child for child in ax.get_children() if isinstance(child, ContourSet)]
    return np.concatenate([segment[:, 0] for segment in contours.allsegs[0]])


def test_a_colour_bar_in_suv_spans_zero_to_the_shown_maximum():
    suv = np.full((12, 10, 14), 0.5, np.float32)
    suv[3, 4, 5] = 7.5
    figure = mip_figure(suv, None, RAS_GRID)
    (bar,) = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert bar.get_ylabel() == SUV_LABEL
    assert bar.get_ylim() == pytest.approx((0.0, 7.5))
    figure = mip_figure(suv, None, RAS_GRID, vmax=3.0)
    (bar,) = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert bar.get_ylim() == pytest.approx((0.0, 3.0))


@pytest.mark.parametrize("affine", [LPS_GRID, RAS_GRID, np.array([  # i runs up the body, k to the right
    [0.0, 0.0, 4.0, 0.0], [0.0, -4.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])])
def test_orientation_labels_come_from_the_affine(affine):
    assert axis_ends(affine, (6, 7, 8)) == [("L", "R"), ("P", "A"), ("I", "S")]
    figure = mip_figure(np.ones((6, 7, 8), np.float32), None, affine)
    coronal, sagittal = figure.axes[:2]
    assert [t.get_text() for t in coronal.texts] == ["R", "L", "S", "I"]  # left, right, top, bottom
    assert [t.get_text() for t in sagittal.texts] == ["A", "P", "S", "I"]


@pytest.mark.parametrize("affine", [LPS_GRID, RAS_GRID])
def test_a_lesion_on_the_patients_right_is_drawn_outlined_on_the_side_labelled_r(affine):
    shape = (30, 20, 24)
    suv = np.full(shape, 0.5, np.float32)
    mask = np.zeros(shape, np.uint8)
    # The voxels whose world x is largest (the most to the patient's right) on this affine's grid.
    right_end = slice(0, 3) if affine[0, 0] < 0 else slice(shape[0] - 3, shape[0])
    mask[right_end, 8:12, 10:14] = 1
    suv[mask > 0] = 9.0
    coronal = mip_figure(suv, mask, affine).axes[0]
    lesion, outline = hot_x(coronal), outline_x(coronal)
    assert outline.min() <= lesion.min() and lesion.max() <= outline.max()  # the outline is on the lesion
    assert outline.max() - outline.min() == pytest.approx(lesion.max() - lesion.min() + 4.0, abs=4.0)
    on_screen = coronal.transAxes.inverted().transform(coronal.transData.transform(np.c_[lesion, lesion * 0]))[:, 0]
    label = coronal.texts[0]
    assert label.get_text() == "R" and label.get_position()[0] < 0.5
    assert on_screen.max() < 0.5  # drawn on the viewer's left, where the R label is


def test_many_components_or_a_huge_volume_get_a_warning_on_the_picture(tmp_path, caplog):
    suv = np.ones((40, 40, 40), np.float32)
    dots = np.zeros(suv.shape, np.uint8)
    dots[::4, ::4, 0] = 1  # 100 separate voxels (26-connectivity needs a gap of one)
    assert mask_warnings(dots, RAS_GRID, max_components=99) == [
        "WARNING: 100 components (more than 99): likely false positives"]
    assert mask_warnings(dots, RAS_GRID, max_components=100) == []
    block = np.zeros(suv.shape, np.uint8)
    block[:20, :20, :20] = 1  # 8000 voxels of 48 mm3: 384 ml
    assert mask_warnings(block, RAS_GRID) == []
    assert mask_warnings(block, RAS_GRID, max_volume_ml=300.0) == [
        "WARNING: 384 ml predicted (more than 300 ml): far beyond typical lesions"]
    assert mask_warnings(None, RAS_GRID) == []

    figure = mip_figure(suv, dots, RAS_GRID, title="dots", warnings=mask_warnings(dots, RAS_GRID))
    (warning,) = [text for text in figure.texts if text.get_text().startswith("WARNING")]
    assert warning.get_text() == "WARNING: 100 components (more than 20): likely false positives"
    assert warning.get_visible() and warning.get_color() == "#b30000"
    assert [text.get_text() for text in mip_figure(suv, block, RAS_GRID, title="block").texts] == ["block"]
    with caplog.at_level("WARNING", logger="wspet.inference.mip"):
        save_mip_png(suv, dots, RAS_GRID, tmp_path / "warned.png")
    assert "warned.png: WARNING: 100 components" in caplog.text
