from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest

from wspet.metrics import case_metrics, dice_score
from wspet.evaluation.overlays import largest_slice
from wspet.evaluation.report import (
    RESULT_COLUMNS,
    RunRecord,
    collect_runs,
    default_figure_experiment,
    figure1,
    plot_figure1,
    plot_figure2,
    reference_results,
    results_table,
    summary_markdown,
    write_report,
)

SHAPE = (24, 24, 24)
SPACING = (2.0, 2.0, 3.0)
AFFINE = np.diag(SPACING + (1.0,))


def _r2(centre):
    i, j, k = np.indices(SHAPE)
    return (i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """case name -> (image, label). case_a: a uniform cube lesion; case_b: a Gaussian
    blob with a spherical label."""
    image_a = np.ones(SHAPE, dtype=np.float32)
    image_a[8:12, 8:12, 8:12] = 8.0
    label_a = np.zeros(SHAPE, dtype=np.uint8)
    label_a[8:12, 8:12, 8:12] = 1
    centre = (14, 12, 10)
    image_b = (1.0 + 9.0 * np.exp(-_r2(centre) / (2 * 2.0**2))).astype(np.float32)
    label_b = (_r2(centre) <= 3**2).astype(np.uint8)
    return {"case_a": (image_a, label_a), "case_b": (image_b, label_b)}


def _predictions() -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """(experiment, seed) -> case -> binary prediction with a known Dice."""
    cases = _cases()
    half_a = np.zeros(SHAPE, dtype=np.uint8)
    half_a[8:12, 8:12, 8:10] = 1  # half the cube: Dice 2*32/(32+64) = 2/3
    grown_a = np.zeros(SHAPE, dtype=np.uint8)
    grown_a[7:13, 7:13, 7:13] = 1  # 216 voxels around 64: Dice 128/280
    return {
        ("mdice_ms", 0): {"case_a": cases["case_a"][1], "case_b": cases["case_b"][1]},
        ("mdice_ms", 1): {"case_a": half_a, "case_b": np.zeros(SHAPE, dtype=np.uint8)},
        ("dice", 0): {"case_a": grown_a, "case_b": cases["case_b"][1]},
    }


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))


def make_dataset(root: Path) -> Path:
    test = []
    for name, (image, label) in _cases().items():
        _save(image, root / "imagesTs" / f"{name}.nii.gz")
        _save(label, root / "labelsTs" / f"{name}.nii.gz")
        test.append({"image": f"imagesTs/{name}.nii.gz", "label": f"labelsTs/{name}.nii.gz",
                     "boxes": []})
    (root / "dataset.json").write_text(json.dumps({"name": "fake", "training": [], "test": test}))
    return root


def make_run(run_dir: Path, experiment: str, seed: int, data_root: Path,
             preds: dict[str, np.ndarray]) -> Path:
    """A run folder following the training code's contract, metrics from `preds`."""
    labels = {name: label for name, (_, label) in _cases().items()}
    rows = []
    for case, pred in preds.items():
        _save(pred, run_dir / "predictions" / f"{case}_mask.nii.gz")
        rows.append({"case": case} | case_metrics(pred, labels[case], SPACING))
    with (run_dir / "test_metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {"experiment": experiment, "loss": experiment, "postprocess": "none",
               "seed": seed, "data_root": str(data_root), "collapsed": False,
               "test": {"dice": float(np.mean([r["dice"] for r in rows]))}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def make_sweep(tmp: Path) -> Path:
    data_root = make_dataset(tmp / "DATA")
    sweep = tmp / "SWEEP"
    folders = {("mdice_ms", 0): "0", ("mdice_ms", 1): "1", ("dice", 0): "grid/2"}
    for (experiment, seed), preds in _predictions().items():
        make_run(sweep / folders[experiment, seed], experiment, seed, data_root, preds)
    return sweep


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    sweep = make_sweep(tmp)
    return sweep, write_report(sweep)


PERFECT = {"dice": 1.0, "ude_mm": 0.0, "hd95_mm": 0.0, "lesions_found": 1.0,
           "lesions_missed": 0.0, "lesions_false": 0.0, "pred_empty": 0.0}


def read_results(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_report_writes_four_files_in_the_sweep(report):
    sweep, paths = report
    assert {k: p.name for k, p in paths.items()} == {
        "results_csv": "results.csv", "results_md": "results.md",
        "figure1": "figure1.png", "figure2": "figure2.png",
    }
    assert all(p.parent == sweep and p.is_file() for p in paths.values())
    assert not list(sweep.glob(".*.tmp"))  # no temp file left behind


def test_results_csv_rows_and_values(report):
    _, paths = report
    rows = read_results(paths["results_csv"])
    assert tuple(rows[0]) == RESULT_COLUMNS
    # 3 runs x 2 cases, the best weak experiment's run kept in the test boxes x 2 cases, 3 reference rows x 2 cases
    assert len(rows) == 14
    by_key = {(r["experiment"], r["seed"], r["case"]): r for r in rows}
    assert float(by_key["mdice_ms", "1", "case_a"]["dice"]) == pytest.approx(2 / 3)
    assert float(by_key["dice", "0", "case_a"]["dice"]) == pytest.approx(128 / 280)
    empty = by_key["mdice_ms", "1", "case_b"]
    assert (empty["dice"], empty["pred_empty"]) == ("0", "1")
    assert math.isnan(float(empty["ude_mm"])) and math.isnan(float(empty["hd95_mm"]))
    assert [r["seed"] for r in rows if r["experiment"] in ("box", "box_threshold", "box_otsu")] == [""] * 6


def test_reference_rows_in_results(report):
    _, paths = report
    rows = {(r["experiment"], r["case"]): r for r in read_results(paths["results_csv"])}
    # Uniform cube lesion: its tight box is the lesion, and every voxel is above 41%.
    assert float(rows["box", "case_a"]["dice"]) == 1.0
    assert float(rows["box_threshold", "case_a"]["dice"]) == 1.0
    # Sphere of radius 3: box Dice from an independently built tight box.
    label = _cases()["case_b"][1].astype(bool)
    idx = np.argwhere(label)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    box = np.zeros(SHAPE, dtype=bool)
    box[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    assert float(rows["box", "case_b"]["dice"]) == pytest.approx(dice_score(box, label))
    # Gaussian peak 10 over background 1, sigma 2: 41% of 10 keeps
    # r^2 <= -8 ln(3.1 / 9), about 8.53, so the ball r^2 <= 8 inside the r = 3 label.
    kept = _r2((14, 12, 10)) <= 8
    assert float(rows["box_threshold", "case_b"]["dice"]) == pytest.approx(
        dice_score(kept, label))
    assert float(rows["box_threshold", "case_b"]["lesions_found"]) == 1


def test_box_prompted_rows_keep_the_best_weak_run_inside_the_tight_test_boxes(report):
    _, paths = report
    rows = read_results(paths["results_csv"])
    prompted = {r["case"]: r for r in rows if r["experiment"] == "box_prompted"}
    plain = {r["case"]: r for r in rows if r["experiment"] == "dice"}  # the best weak experiment here
    assert sorted(prompted) == sorted(plain) == ["case_a", "case_b"]
    for case in prompted:
        # Only false positives lie outside a lesion's tight box: Dice can rise, never fall.
        assert float(prompted[case]["dice"]) >= float(plain[case]["dice"])
        assert float(prompted[case]["lesions_false"]) <= float(plain[case]["lesions_false"])
    assert any(float(prompted[c]["dice"]) > float(plain[c]["dice"]) for c in prompted)


def test_results_md_mean_std_and_empty_count(report):
    _, paths = report
    text = paths["results_md"].read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("| mdice_ms |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # Dice over 2 cases x 2 seeds: 1, 1, 2/3, 0 -> mean 2/3, sample std sqrt(2/9).
    assert cells[:4] == ["mdice_ms", "2", "4", f"0.667 ± {math.sqrt(2 / 9):.3f}"]
    assert cells[4].endswith("(n=3)")  # distances over the 3 non-empty predictions
    assert cells[-1] == "1 / 4"
    # Lesions found per case: 1, 1, 1, 0 -> mean 0.75
    assert cells[6].startswith("0.75 ± ")


def test_results_md_order_and_reference_note(report):
    _, paths = report
    text = paths["results_md"].read_text()
    summary, comparisons = text.split("## Paired differences")
    names = [ln.split("|")[1].strip() for ln in summary.splitlines()
             if ln.startswith("| ") and not ln.startswith("| experiment")]
    assert names == ["dice", "mdice_ms", "box_prompted †", "box *", "box_threshold *", "box_otsu *"]
    compared = [ln.split("|")[1].strip() for ln in comparisons.split("## Seed to seed")[0].splitlines()
                if ln.startswith("| ") and not ln.startswith("| comparison")]
    assert compared == ["dice − mdice_ms", "box_prompted − box_threshold", "box_prompted − box", "box_prompted − dice",
                        "box_prompted − box_otsu"]
    assert "| mdice_ms |" in comparisons.split("## Seed to seed")[1]
    assert "† `box_prompted`: the best weak experiment, `dice`" in text
    assert "tight boxes from the **test labels**" in text
    assert "help at test time" in text


@pytest.mark.parametrize("name", ["figure1", "figure2"])
def test_figures_are_valid_pngs(report, name):
    _, paths = report
    image = mpimg.imread(paths[name])
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05


def test_figure2_draws_green_and_purple_outlines(report):
    _, paths = report
    rgb = mpimg.imread(paths["figure2"])[..., :3]

    def near(colour):
        return int((np.abs(rgb - np.array(colour)).max(axis=-1) < 0.12).sum())

    assert near((0.0, 0xC0 / 255, 0.0)) > 20  # prediction, green
    assert near((0xB0 / 255, 0x30 / 255, 0xE0 / 255)) > 20  # ground truth, purple


def test_default_figure_experiment_is_best_mean_weak(report):
    sweep, _ = report
    runs = collect_runs(sweep)
    rows = results_table(runs)
    assert default_figure_experiment(rows, runs) == "dice"  # 0.729 vs 0.667
    # A fully supervised run with a higher mean is not weak and is passed over. It is recognised
    # by the supervision in its summary, or, in a summary without it, by its experiment or loss.
    for experiment, loss, supervision in (("fs", "fs", None), ("fs_morph", "fs", None),
                                          ("fs_dice_ce", "fs_dice_ce", None), ("mine", "mine", "label")):
        row = {"experiment": experiment, "seed": 0, "case": "case_a"} | PERFECT
        fs = RunRecord(Path(experiment), experiment, 0, runs[0].data_root, loss, supervision, "morph",
                       False, [row])
        assert not fs.weak
        assert default_figure_experiment(rows + [row], runs + [fs]) == "dice"
    # A loss on labels made from the boxes is weak, whatever its name.
    row = {"experiment": "fs_pseudo", "seed": 0, "case": "case_a"} | PERFECT
    pseudo = RunRecord(Path("p"), "fs_pseudo", 0, runs[0].data_root, "fs", "pseudo", "none", False, [row])
    assert default_figure_experiment(rows + [row], runs + [pseudo]) == "fs_pseudo"


def test_box_prompted_note_says_when_no_run_is_weak(tmp_path):
    data_root = make_dataset(tmp_path / "DATA")
    preds = next(iter(_predictions().values()))
    run = make_run(tmp_path / "SWEEP" / "0", "fs_dice_ce", 0, data_root, preds)
    summary = json.loads((run / "summary.json").read_text()) | {"supervision": "label"}
    (run / "summary.json").write_text(json.dumps(summary))
    text = write_report(tmp_path / "SWEEP", tmp_path / "OUT")["results_md"].read_text()
    assert "the best learned (none is weak) experiment, `fs_dice_ce`" in text


def test_figure2_for_chosen_and_reference_experiment(report, tmp_path):
    sweep, _ = report
    runs = collect_runs(sweep)
    rows = results_table(runs)
    for experiment in ("mdice_ms", "box_threshold"):
        rows_plus = rows + [r for r in results_table([], _reference(runs))
                            if r["experiment"] == experiment]
        path = plot_figure2(rows_plus, runs, tmp_path / f"{experiment}.png", experiment)
        assert mpimg.imread(path).shape[0] > 300
    with pytest.raises(ValueError, match="'nope' is not in the results"):
        plot_figure2(rows, runs, tmp_path / "x.png", "nope")


def _reference(runs):
    return reference_results(runs[0].data_root)


@pytest.mark.parametrize("k_sign, superior_up", [(1.0, True), (-1.0, False)])
def test_superior_end_of_k_comes_from_the_affine(k_sign, superior_up):
    from wspet.evaluation.overlays import superior_is_increasing_k

    pet = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.diag([2.0, 2.0, 3.0 * k_sign, 1]))
    assert superior_is_increasing_k(pet.affine) is superior_up


def test_cli_writes_to_out_dir(report, tmp_path):
    sweep, _ = report
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "wspet.evaluation.report", str(sweep), "--out", str(out),
         "--figure-experiment", "mdice_ms"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "figure1.png", "figure2.png", "results.csv", "results.md"]
    assert len(read_results(out / "results.csv")) == 14
    # The summary table is printed, not only the paths.
    assert "| experiment | runs | n | Dice |" in proc.stdout
    assert "| mdice_ms | 2 | 4 | 0.667 ± 0.471 |" in proc.stdout


def test_cli_error_exit_code_and_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "wspet.evaluation.report", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert str(tmp_path) in proc.stderr and "no run folder" in proc.stderr


# ------------------------------------------------------------------------ errors


def test_empty_sweep_is_an_error(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path}: no run folder"):
        write_report(tmp_path)


def test_missing_test_metrics_names_the_run(tmp_path):
    sweep = make_sweep(tmp_path)
    (sweep / "grid" / "2" / "test_metrics.csv").unlink()
    with pytest.raises(ValueError, match=f"{sweep / 'grid' / '2'}: run has no test_metrics.csv"):
        collect_runs(sweep)


def test_runs_disagreeing_on_data_root_name_both(tmp_path):
    sweep = make_sweep(tmp_path)
    other = shutil.copytree(tmp_path / "DATA", tmp_path / "DATA2")
    summary_path = sweep / "1" / "summary.json"
    summary = json.loads(summary_path.read_text()) | {"data_root": str(other)}
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="disagree on data_root") as err:
        write_report(sweep)
    assert str(tmp_path / "DATA") in str(err.value) and str(other) in str(err.value)


def test_duplicate_experiment_and_seed_is_an_error(tmp_path):
    sweep = make_sweep(tmp_path)
    shutil.copytree(sweep / "1", sweep / "again")
    with pytest.raises(ValueError, match="experiment 'mdice_ms' seed 1 also in"):
        collect_runs(sweep)


def test_run_missing_a_test_case_is_an_error(tmp_path):
    sweep = make_sweep(tmp_path)
    path = sweep / "0" / "test_metrics.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n")  # header + case_a only
    with pytest.raises(ValueError, match=r"missing \['case_b'\]"):
        write_report(sweep)


def test_summary_markdown_without_std_for_single_result():
    rows = [{"experiment": "new_loss", "seed": 0, "case": "c"}
            | PERFECT | {"dice": 0.5, "ude_mm": 2.0, "hd95_mm": 4.0}]
    line = next(ln for ln in summary_markdown(rows).splitlines() if ln.startswith("| new_loss"))
    assert "| 0.500 | 2.00 | 4.00 |" in line


def test_all_empty_experiment_has_no_distance_and_still_plots(tmp_path):
    empty = PERFECT | {"dice": 0.0, "ude_mm": math.nan, "hd95_mm": math.nan,
                       "lesions_found": 0.0, "lesions_missed": 1.0, "pred_empty": 1.0}
    rows = [{"experiment": "dice", "seed": s, "case": "c"} | empty for s in (0, 1)]
    rows += [{"experiment": "fs", "seed": 0, "case": "c"} | PERFECT]
    line = next(ln for ln in summary_markdown(rows).splitlines() if ln.startswith("| dice"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:6] == ["0.000 ± 0.000", "– (n=0)", "– (n=0)"]
    assert cells[-1] == "2 / 2"
    image = mpimg.imread(plot_figure1(rows, tmp_path / "f1.png"))
    assert image.shape[0] > 300


def test_figure1_is_box_plots_of_every_result_labelled(report):
    sweep, _ = report
    runs = collect_runs(sweep)
    rows = results_table(runs, reference_results(runs[0].data_root))
    dice_ax, ude_ax = figure1(rows).axes
    names = [t.get_text() for t in dice_ax.get_xticklabels()]
    assert names == ["dice", "mdice_ms", "box", "box_threshold", "box_otsu"]
    # One box per experiment spanning the quartiles of its (case, seed) Dice; reference rows hatched.
    boxes = [p for p in dice_ax.patches if p.get_path().vertices.size]
    assert len(boxes) == 5
    spans = [tuple(np.round(np.sort(np.unique(b.get_path().vertices[:, 1]))[[0, -1]], 6)) for b in boxes]
    mdice = [r["dice"] for r in rows if r["experiment"] == "mdice_ms"]
    assert spans[1] == tuple(np.round(np.percentile(mdice, [25, 75]), 6))
    assert [bool(b.get_hatch()) for b in boxes] == [False, False, True, True, True]
    assert [t.get_text() for t in ude_ax.get_xticklabels()][1] == "mdice_ms (n=3)"  # the empty prediction left out
    assert "whiskers" in figure1(rows)._suptitle.get_text() and "diamond: mean" in figure1(rows)._suptitle.get_text()


def test_figure_slice_shows_a_prediction_that_missed_the_lesion():
    truth = np.zeros(SHAPE, dtype=bool)
    truth[4:6, 4:6, 4:6] = True  # 8 voxels
    pred = np.zeros(SHAPE, dtype=bool)
    pred[15:20, 15:20, 15:20] = True  # a larger false positive far away
    assert largest_slice(pred, truth, 0) == 17 and largest_slice(pred, truth, 1) == 17


def test_figure_slice_prefers_both_masks_and_the_middle_of_ties():
    truth = np.zeros(SHAPE, dtype=bool)
    truth[8:12, 8:12, 8:12] = True
    pred = np.zeros(SHAPE, dtype=bool)
    pred[7:13, 7:13, 7:13] = True  # same count in slices 7..12; truth adds to 8..11
    assert largest_slice(pred, truth, 1) == 10
    assert largest_slice(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool), 0) == SHAPE[0] // 2


def test_box_prompted_rows_segment_a_box_the_model_left_empty_by_the_default_fallback(tmp_path):
    from wspet.data.boxes import box_region
    from wspet.data.pseudo_labels import box_lesion
    from wspet.evaluation.reference_rows import tight_boxes
    from wspet.evaluation.report import box_prompted_results

    data_root = make_dataset(tmp_path / "DATA")
    cases = _cases()
    empty = np.zeros(SHAPE, dtype=np.uint8)
    run = make_run(tmp_path / "SWEEP" / "0", "dice", 0, data_root,
                   {"case_a": cases["case_a"][1], "case_b": empty})  # case_b's lesion missed
    rows = {r["case"]: r for r in box_prompted_results(collect_runs(run.parent), data_root, "dice")}
    assert rows["case_a"]["dice"] == pytest.approx(1.0)  # the model's own answer, kept
    image_b, label_b = cases["case_b"]
    (box,) = tight_boxes(label_b)  # one lesion: its tight box segmented by Otsu
    fallback = np.zeros(SHAPE, dtype=bool)
    fallback[box_region(box)] = box_lesion(np.asarray(image_b, np.float32)[box_region(box)], "otsu", component="central")[0]
    assert rows["case_b"]["dice"] == pytest.approx(dice_score(fallback, label_b))
    assert rows["case_b"]["dice"] > 0.5


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "not valid JSON: nested too deeply"),
    ("\xff{", "not valid JSON"),
    ("[1, 2]", "the run summary is list, not a JSON object"),
])
def test_a_run_summary_that_is_not_a_json_object_is_refused_naming_it(tmp_path, text, message):
    run = tmp_path / "SWEEP" / "0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(text, encoding="latin-1")
    with pytest.raises(ValueError, match=message) as refused:
        collect_runs(tmp_path / "SWEEP")
    assert str(run / "summary.json") in str(refused.value)
