"""Sweep folder -> results.csv, results.md, figure1.png, figure2.png (the paper's
Figures 1 and 2 and its comparison table, from our runs).

A sweep folder holds run folders at any depth, each found by its summary.json:

    <run>/summary.json          {"experiment", "seed", "data_root", "loss", "supervision",
                                 "collapsed", ...}
    <run>/test_metrics.csv      one row per test case (case, dice, ude_mm, hd95_mm,
                                lesions_found, lesions_missed, lesions_false, pred_empty)
    <run>/predictions/<case>_mask.nii.gz   the final binary mask on the test image's grid

The two reference rows (`wspet.evaluation.reference_rows`) are computed here from the test images
and labels of the runs' common data_root. See docs/report.md.

CLI: `python -m wspet.evaluation.report SWEEP_DIR [--out DIR] [--figure-experiment NAME]`.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wspet.data.format import CaseEntry, DatasetError, Volume, load_image, load_label, parse_json, read_dataset
from wspet.evaluation.comparisons import paired_markdown, per_seed_markdown
from wspet.evaluation.overlays import draw_case
from wspet.io import atomic_path, write_text
from wspet.metrics.summary import METRIC_NAMES, case_metrics, mean_std
from wspet.postprocess.box_prompt import DEFAULT_FALLBACK, DEFAULT_UNION, fill_empty_boxes
from wspet.evaluation.reference_rows import REFERENCE_ROWS, tight_boxes

RESULT_COLUMNS = ("experiment", "seed", "case") + METRIC_NAMES

# Row order of the paper's Figure 1; reference rows last; unknown experiments after.
PAPER_ORDER = (
    "fs",
    "fs_dice_ce",
    "dice",
    "mdice",
    "mdice_ms",
    "mdice_ms_morph",
    "dice_levelset",
    "pseudo",
    "boxproj",
    "tightness",
    "box_prompted",
    "box",
    "box_threshold",
    "box_otsu",
)
# The best weak experiment's predictions kept inside the tight test boxes (box_prompted_results).
BOX_PROMPTED = "box_prompted"
# Experiments trained with the full labels, for runs whose summary predates its "supervision" key.
FULLY_SUPERVISED = frozenset({"fs", "fs_dice_ce"})


ResultRow = dict[str, Any]


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunRecord:
    """One training run of a sweep: its summary and its per-case test metrics.

    `metrics`: one dict per test case with "case" (str) and the METRIC_NAMES as floats
    (NaN where the CSV holds NaN, e.g. distances of an empty prediction).
    """

    run_dir: Path
    experiment: str
    seed: int
    data_root: Path
    loss: str | None
    supervision: str | None  # the mask the loss saw (loss.supervision): box, pseudo or label
    postprocess: str | None
    collapsed: bool
    metrics: list[dict[str, Any]] = field(repr=False)

    def prediction_path(self, case: str) -> Path:
        return self.run_dir / "predictions" / f"{case}_mask.nii.gz"

    @property
    def weak(self) -> bool:
        """Trained without the labels (from boxes or labels made from them)."""
        if self.supervision is not None:
            return self.supervision != "label"
        return self.experiment not in FULLY_SUPERVISED and self.loss not in FULLY_SUPERVISED


def collect_runs(sweep_dir: str | os.PathLike) -> list[RunRecord]:
    """Every run folder under `sweep_dir` (any depth, found by its summary.json), sorted
    by experiment, seed and folder.

    Raises ValueError naming the folder when it holds no summary.json, naming the run
    folder when its summary lacks a key or its test_metrics.csv is missing or malformed,
    and naming both folders when two runs share one experiment and seed (their results
    would be silently pooled).
    """
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise ValueError(f"{sweep}: sweep folder does not exist")
    runs = [_read_run(p.parent) for p in sorted(sweep.rglob("summary.json"))]
    if not runs:
        raise ValueError(f"{sweep}: no run folder (no summary.json) found in the sweep")
    seen: dict[tuple[str, int], Path] = {}
    for run in runs:
        key = (run.experiment, run.seed)
        if key in seen:
            raise ValueError(
                f"{run.run_dir}: experiment {run.experiment!r} seed {run.seed} also in "
                f"{seen[key]}; give the runs distinct experiment names"
            )
        seen[key] = run.run_dir
    return sorted(runs, key=lambda r: (experiment_rank(r.experiment), r.seed, str(r.run_dir)))


def _read_run(run_dir: Path) -> RunRecord:
    summary_path = run_dir / "summary.json"
    try:
        summary = parse_json(summary_path.read_bytes())
    except (OSError, ValueError) as err:
        raise ValueError(f"{summary_path}: cannot read the run summary ({err})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{summary_path}: the run summary is {type(summary).__name__}, not a JSON object")
    missing = [k for k in ("experiment", "seed", "data_root") if k not in summary]
    if missing:
        raise ValueError(f"{summary_path}: missing key(s) {missing}")
    seed = summary["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{summary_path}: seed must be an int, got {seed!r}")
    return RunRecord(
        run_dir=run_dir,
        experiment=str(summary["experiment"]),
        seed=seed,
        data_root=Path(summary["data_root"]),
        loss=summary.get("loss"),
        supervision=summary.get("supervision"),
        postprocess=summary.get("postprocess"),
        collapsed=bool(summary.get("collapsed", False)),
        metrics=_read_test_metrics(run_dir),
    )


def _read_test_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "test_metrics.csv"
    if not path.is_file():
        raise ValueError(f"{run_dir}: run has no test_metrics.csv")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("case",) + METRIC_NAMES if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            try:
                row = {"case": raw["case"]} | {m: float(raw[m]) for m in METRIC_NAMES}
            except (TypeError, ValueError):
                raise ValueError(f"{path}: line {line} has a non-numeric metric: {raw}") from None
            rows.append(row)
    cases = [r["case"] for r in rows]
    if len(set(cases)) != len(cases):
        raise ValueError(f"{path}: a case appears twice: {sorted(cases)}")
    return rows


def sweep_data_root(runs: Sequence[RunRecord]) -> Path:
    """The data_root shared by all runs; ValueError naming two runs that disagree."""
    first = runs[0]
    for run in runs[1:]:
        if run.data_root.resolve() != first.data_root.resolve():
            raise ValueError(
                f"runs disagree on data_root: {first.run_dir} uses {first.data_root}, "
                f"{run.run_dir} uses {run.data_root}"
            )
    return first.data_root


# ------------------------------------------------------------------ test dataset


def read_test_cases(data_root: str | os.PathLike) -> tuple[CaseEntry, ...]:
    """The test cases of ``data_root`` as the dataset reader gives them (:mod:`wspet.data.format`).

    Raises ValueError (a :class:`~wspet.data.format.DatasetError`) naming the dataset when it
    cannot be read, lists no test case, or a test case has no label: the reference rows and
    Figure 2 need the test labels.
    """
    cases = read_dataset(data_root).test
    if not cases:
        raise DatasetError(Path(data_root) / "dataset.json", ["no 'test' cases listed"])
    unlabelled = [case.name for case in cases if case.label is None]
    if unlabelled:
        raise DatasetError(Path(data_root) / "dataset.json", [f"test case(s) {unlabelled} have no label"])
    return cases


def _load_case(case: CaseEntry) -> tuple[Volume, np.ndarray]:
    """The test image and its label as a bool mask, each checked by the dataset reader."""
    image = load_image(case.image)
    return image, load_label(case.label, image) > 0


def _load_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"{path}: prediction mask not found")
    mask = np.asarray(nib.load(str(path)).dataobj) != 0
    if mask.shape != shape:
        raise ValueError(f"{path}: prediction shape {mask.shape} != image shape {shape}")
    return mask


def reference_results(data_root: str | os.PathLike) -> list[ResultRow]:
    """Per-case metrics of the reference rows (`box`, `box_threshold`, `box_otsu`) on the test set.

    Rows as in `results_table`, with seed None.
    """
    rows = []
    for case in read_test_cases(data_root):
        image, label = _load_case(case)
        for name, predict in REFERENCE_ROWS.items():
            metrics = case_metrics(predict(image.array, label), label, image.spacing)
            rows.append({"experiment": name, "seed": None, "case": case.name} | metrics)
    # Each image is loaded once, then the rows are grouped by reference row (stable sort).
    order = list(REFERENCE_ROWS)
    return sorted(rows, key=lambda r: order.index(r["experiment"]))


def box_prompted_results(runs: Sequence[RunRecord], data_root: str | os.PathLike, experiment: str) -> list[ResultRow]:
    """Per-case metrics of ``experiment``'s predictions kept inside the tight boxes of the test labels.

    The model used as a clinician would use it, with a box drawn around each lesion at test time;
    the boxes are the reference rows' own, so the three rows get the same help. As ``predict.py
    boxes=FILE`` does by default, every box gets the default ``box_fallback``'s lesion joined to the
    model's (``box_union``; :func:`fill_empty_boxes`). One row per (seed, case), named :data:`BOX_PROMPTED`.
    """
    rows = []
    for case in read_test_cases(data_root):
        image, label = _load_case(case)
        boxes = tight_boxes(label)
        for run in (r for r in runs if r.experiment == experiment):
            prediction, _ = fill_empty_boxes(_load_mask(run.prediction_path(case.name), label.shape), image.array, boxes)
            rows.append({"experiment": BOX_PROMPTED, "seed": run.seed, "case": case.name} | case_metrics(prediction, label, image.spacing))
    return rows


def check_run_cases(runs: Sequence[RunRecord], cases: Sequence[str]) -> None:
    """ValueError naming the run folder when its test_metrics.csv lacks a test case of
    the dataset or holds a case the dataset does not list (a failed case is never
    dropped silently)."""
    expected = set(cases)
    for run in runs:
        got = {r["case"] for r in run.metrics}
        if got != expected:
            raise ValueError(
                f"{run.run_dir}: test_metrics.csv cases differ from the dataset's test set: "
                f"missing {sorted(expected - got)}, unknown {sorted(got - expected)}"
            )


# ------------------------------------------------------------------------- tables


def results_table(
    runs: Sequence[RunRecord], reference: Sequence[ResultRow] = ()
) -> list[ResultRow]:
    """One row per (experiment, seed, case): the runs' metrics then the `reference` rows.

    Each row has the RESULT_COLUMNS keys; seed is None for reference rows.
    """
    rows = [
        {"experiment": run.experiment, "seed": run.seed} | m
        for run in runs
        for m in run.metrics
    ]
    return rows + [dict(r) for r in reference]


def experiment_rank(name: str) -> tuple[int, str]:
    """Sort key: the paper's Figure 1 order, then unknown experiments by name."""
    return (PAPER_ORDER.index(name), "") if name in PAPER_ORDER else (len(PAPER_ORDER), name)


def experiments_in_order(rows: Iterable[ResultRow]) -> list[str]:
    return sorted({r["experiment"] for r in rows}, key=experiment_rank)


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and not math.isnan(value):
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def results_csv_text(rows: Sequence[ResultRow]) -> str:
    """`rows` as CSV text (RESULT_COLUMNS; empty seed for reference rows, "nan" for NaN)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for row in rows:
        writer.writerow([_format_cell(row[c]) for c in RESULT_COLUMNS])
    return out.getvalue()


@dataclass(frozen=True)
class ExperimentSummary:
    """Mean and sample std (n - 1; NaN for n < 2) of each metric over an experiment's
    (case, seed) results. Distances are over the finite values only (`n_distance`)."""

    experiment: str
    n: int
    n_seeds: int
    n_collapsed: int
    n_empty: int
    n_distance: int
    mean: dict[str, float]
    std: dict[str, float]


def summarize(
    rows: Sequence[ResultRow], runs: Sequence[RunRecord] = ()
) -> list[ExperimentSummary]:
    """One ExperimentSummary per experiment of `rows`, in Figure 1 order. `runs` give
    the collapsed-run counts (0 where not given)."""
    summaries = []
    for name in experiments_in_order(rows):
        mine = [r for r in rows if r["experiment"] == name]
        mean, std = {}, {}
        for metric in METRIC_NAMES:
            values = np.array([r[metric] for r in mine], dtype=float)
            # Distances are NaN for an empty prediction: average the rest, count them apart.
            mean[metric], std[metric] = mean_std(values[np.isfinite(values)])
        seeds = {r["seed"] for r in mine if r["seed"] is not None}
        summaries.append(
            ExperimentSummary(
                experiment=name,
                n=len(mine),
                n_seeds=len(seeds),
                n_collapsed=sum(1 for run in runs if run.experiment == name and run.collapsed),
                n_empty=int(sum(r["pred_empty"] for r in mine)),
                n_distance=int(np.isfinite([r["ude_mm"] for r in mine]).sum()),
                mean=mean,
                std=std,
            )
        )
    return summaries


def _pm(summary: ExperimentSummary, metric: str, digits: int) -> str:
    m, s = summary.mean[metric], summary.std[metric]
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if not math.isnan(s) else f"{m:.{digits}f}"


def summary_markdown(rows: Sequence[ResultRow], runs: Sequence[RunRecord] = ()) -> str:
    """The results table in Markdown, with notes on how each column is computed."""
    lines = [
        "| experiment | runs | n | Dice | UDE (mm) | HD95 (mm) | lesions found | "
        "lesions missed | false lesions | empty predictions |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summarize(rows, runs):
        reference = s.experiment in REFERENCE_ROWS
        name = f"{s.experiment} *" if reference else f"{s.experiment} †" if s.experiment == BOX_PROMPTED else s.experiment
        n_runs = "–" if reference else str(s.n_seeds)
        if s.n_collapsed:
            n_runs += f" ({s.n_collapsed} collapsed)"
        excluded = s.n - s.n_distance
        dist_note = f" (n={s.n_distance})" if excluded else ""
        lines.append(
            f"| {name} | {n_runs} | {s.n} | {_pm(s, 'dice', 3)} "
            f"| {_pm(s, 'ude_mm', 2)}{dist_note} | {_pm(s, 'hd95_mm', 2)}{dist_note} "
            f"| {_pm(s, 'lesions_found', 2)} | {_pm(s, 'lesions_missed', 2)} "
            f"| {_pm(s, 'lesions_false', 2)} | {s.n_empty} / {s.n} |"
        )
    notes = [
        "",
        "Mean ± sample standard deviation (n − 1) over all (test case, seed) results of an",
        "experiment; n = test cases × seeds; runs = seeds.",
        "UDE (average symmetric surface distance) and HD95 are averaged over the results with a",
        "non-empty prediction only; where some are left out, (n=...) gives how many remain, and",
        "the last column counts the empty predictions (Dice 0 there, kept in the Dice mean).",
        "Lesion columns are means per case (26-connected components; a hit needs one",
        "shared voxel).",
        "",
        "\\* Reference rows, not learned: they use tight boxes from the **test labels** (one per",
        "lesion), i.e. a person's help at test time that the learned rows do not get. `box` is",
        "the box mask itself; `box_threshold` keeps the voxels ≥ 41% of each box's SUVmax (the",
        "clinical fixed threshold, standing in for the paper's semi-automatic SA row);",
        "`box_otsu` is Otsu's lesion in each box, holes filled: what box prompts join to a model's mask.",
    ]
    return "\n".join(lines + notes) + "\n"


# ------------------------------------------------------------------------ figures


def plot_figure1(rows: Sequence[ResultRow], path: str | os.PathLike) -> Path:
    """Figure 1 (`figure1`) written atomically as PNG to `path`."""
    return _atomic_savefig(figure1(rows), Path(path))


def figure1(rows: Sequence[ResultRow]) -> Figure:
    """Figure 1: box plots of Dice and UDE (mm) per experiment over all (case, seed) results
    (two panels), reference rows hatched grey.

    Boxes show the quartiles and the median, whiskers the furthest value within 1.5 IQR of the
    box, circles the values beyond, a diamond the mean. UDE leaves out empty predictions (no
    surface); the number kept is in each UDE label."""
    summaries = summarize(rows)
    names = [s.experiment for s in summaries]
    positions = np.arange(1, len(names) + 1)
    fig = Figure(figsize=(max(7.5, 1.2 * len(names) + 2.5), 4.8), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    titles = ("Dice, each test case x seed", "UDE (mm), non-empty predictions")
    for ax, metric, title in zip(axes, ("dice", "ude_mm"), titles):
        values = [_finite(rows, name, metric) for name in names]
        _box_panel(ax, positions, names, values, show_n=metric == "ude_mm")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1.05)
    axes[1].set_ylim(bottom=0)
    fig.suptitle(
        "Box: quartiles and median; whiskers: furthest value within 1.5 IQR; circles: beyond; diamond: mean.\n"
        "Hatched: reference rows, using tight boxes from the test labels",
        fontsize=8,
    )
    return fig


def _finite(rows: Sequence[ResultRow], experiment: str, metric: str) -> np.ndarray:
    values = np.array([r[metric] for r in rows if r["experiment"] == experiment], dtype=float)
    return values[np.isfinite(values)]


def _box_panel(ax, positions, names: Sequence[str], values: Sequence[np.ndarray], show_n: bool) -> None:
    """One box per experiment; an experiment without a finite value gets a note instead of a box."""
    drawn = [k for k, v in enumerate(values) if v.size]
    boxes = ax.boxplot(
        [values[k] for k in drawn], positions=[positions[k] for k in drawn], widths=0.6,
        patch_artist=True, showmeans=True, manage_ticks=False,
        meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 5},
        medianprops={"color": "black"}, flierprops={"marker": "o", "markersize": 3},
    )
    for k, patch in zip(drawn, boxes["boxes"]):
        reference = names[k] in REFERENCE_ROWS
        patch.set_facecolor("#bbbbbb" if reference else "#4c72b0")
        patch.set_hatch("//" if reference else None)
    for pos, v in zip(positions, values):
        if not v.size:  # every prediction empty: no distance, not a zero one
            ax.text(pos, 0, "none\n(all empty)", ha="center", va="bottom", fontsize=7)
    labels = [f"{name} (n={v.size})" for name, v in zip(names, values)] if show_n else list(names)
    ax.set_xticks(positions, labels, rotation=35, ha="right")
    ax.set_xlim(0.4, len(names) + 0.6)


def plot_figure2(
    rows: Sequence[ResultRow],
    runs: Sequence[RunRecord],
    path: str | os.PathLike,
    experiment: str | None = None,
) -> Path:
    """Figure 2: a good and a bad test case (best and worst Dice over all cases and seeds
    of `experiment`; default the weak experiment with the best mean Dice), each as a
    coronal (fixed j) and a sagittal (fixed i) slice through the centroid of the largest
    true lesion: PET in grey, prediction outlined green, ground truth purple, superior up,
    aspect from the voxel spacing. Written atomically as PNG to `path`.

    Predictions come from the runs' predictions/ folders (computed for a reference row).
    Raises ValueError for an unknown experiment or a missing prediction file.
    """
    if not runs:
        raise ValueError("plot_figure2: needs at least one run (for the data_root)")
    experiment = experiment or default_figure_experiment(rows, runs)
    mine = [r for r in rows if r["experiment"] == experiment]
    if not mine:
        raise ValueError(
            f"--figure-experiment {experiment!r} is not in the results: "
            f"{experiments_in_order(rows)}"
        )
    good = max(mine, key=lambda r: r["dice"])
    bad = min(mine, key=lambda r: r["dice"])
    cases = {c.name: c for c in read_test_cases(sweep_data_root(runs))}
    fig = Figure(figsize=(8.0, 8.0), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for ax_row, (kind, row) in zip(axes, (("good", good), ("bad", bad))):
        case = cases[row["case"]]
        image, truth = _load_case(case)
        pred = _figure_prediction(experiment, row, runs, image.array, truth)
        seed = "" if row["seed"] is None else f", seed {row['seed']}"
        draw_case(ax_row, image.array, pred, truth, image.spacing, image.affine, f"{kind}: {case.name}{seed}, Dice {row['dice']:.2f}")
    fig.suptitle(f"{experiment}: prediction (green) and ground truth (purple)", fontsize=11)
    return _atomic_savefig(fig, Path(path))


def _figure_prediction(
    experiment: str, row: ResultRow, runs: Sequence[RunRecord], image, truth
) -> np.ndarray:
    if experiment in REFERENCE_ROWS:
        return REFERENCE_ROWS[experiment](image, truth)
    run = next(r for r in runs if r.experiment == experiment and r.seed == row["seed"])
    return _load_mask(run.prediction_path(row["case"]), image.shape)


def default_figure_experiment(rows: Sequence[ResultRow], runs: Sequence[RunRecord]) -> str:
    """The weakly supervised experiment (:attr:`RunRecord.weak`) with the best mean Dice; any
    learned one if none is weak."""
    learned = {r.experiment for r in runs}
    weak = {r.experiment for r in runs if r.weak}
    candidates = weak or learned
    means = {s.experiment: s.mean["dice"] for s in summarize(rows) if s.experiment in candidates}
    return max(sorted(means), key=lambda name: means[name])


# ------------------------------------------------------------------------- writing


def _atomic_text(path: Path, text: str) -> Path:
    return write_text(path, text)


def _atomic_savefig(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def default_pairs(learned: Sequence[str], best_weak: str) -> list[tuple[str, str]]:
    """The comparisons the results page shows: the best weak loss against full supervision and every
    other learned row, and box-prompted prediction against the 41% threshold, the box, the best weak
    loss and Otsu in the boxes (what the model adds inside a box)."""
    pairs = [(best_weak, name) for name in learned if name not in (best_weak, BOX_PROMPTED)]
    return pairs + [(BOX_PROMPTED, "box_threshold"), (BOX_PROMPTED, "box"), (BOX_PROMPTED, best_weak),
                    (BOX_PROMPTED, "box_otsu")]


def write_report(
    sweep_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    figure_experiment: str | None = None,
) -> dict[str, Path]:
    """Collect the sweep, compute the reference rows, write the four report files.

    Returns {"results_csv", "results_md", "figure1", "figure2"} -> paths (in `out_dir`,
    default `sweep_dir`). Raises ValueError as `collect_runs`, `sweep_data_root`,
    `check_run_cases` and `plot_figure2` do.
    """
    runs = collect_runs(sweep_dir)
    data_root = sweep_data_root(runs)
    check_run_cases(runs, [c.name for c in read_test_cases(data_root)])
    rows = results_table(runs, reference_results(data_root))
    prompted = default_figure_experiment(rows, runs)
    rows = results_table(runs, box_prompted_results(runs, data_root, prompted) + reference_results(data_root))
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir)
    kind = "weak" if any(r.weak for r in runs) else "learned (none is weak)"
    note = (f"\n† `{BOX_PROMPTED}`: the best {kind} experiment, `{prompted}`, with its predictions kept inside the"
            " reference rows' tight test boxes, "
            + (f"each box's `box_fallback={DEFAULT_FALLBACK}` lesion joined to the model's (`box_union=true`)" if DEFAULT_UNION
               else f"and a box it left empty segmented by `box_fallback={DEFAULT_FALLBACK}`")
            + " (`predict.py boxes=FILE`): the semi-automatic use.\n")
    learned = [name for name in experiments_in_order(rows) if name not in REFERENCE_ROWS]
    comparisons = (
        "\n## Paired differences\n\nDice, over the (test case, seed) results both rows have (a reference row"
        " pairs with every seed):\n\n" + paired_markdown(rows, default_pairs(learned, prompted))
        + "\n## Seed to seed\n\nMean test Dice per seed:\n\n" + per_seed_markdown(rows, learned)
    )
    return {
        "results_csv": _atomic_text(out / "results.csv", results_csv_text(rows)),
        "results_md": _atomic_text(
            out / "results.md", "# Results\n\n" + summary_markdown(rows, runs) + note + comparisons
        ),
        "figure1": plot_figure1(rows, out / "figure1.png"),
        "figure2": plot_figure2(rows, runs, out / "figure2.png", figure_experiment),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wspet.evaluation.report",
        description="Sweep folder -> results.csv, results.md, figure1.png, figure2.png",
    )
    parser.add_argument("sweep_dir", type=Path, help="folder holding the run folders")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: sweep_dir)")
    parser.add_argument("--figure-experiment", default=None,
                        help="experiment shown in figure2 (default: best-mean weak experiment)")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.sweep_dir, args.out, args.figure_experiment)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    print(paths["results_md"].read_text())
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
