"""What a post-processing step would change in a finished run's test scores, case by case.

A training run keeps its final test masks (``RUN/predictions/<case>_mask.nii.gz``, on each test
image's own grid). This script applies one step of ``conf/postprocess/`` to each kept mask, exactly
as ``postprocess=NAME`` would have after the threshold, and scores both masks against the test
labels of ``ROOT``. It prints each case's Dice without and with the step, and the paired difference
(mean ± sample std, cases higher and lower), so a step can be judged on runs already trained.

    python scripts/postprocess_gain.py outputs/RUN data/phantom --postprocess fill_holes [--csv OUT.csv]

The run must have been trained with ``postprocess=none`` (the default is ``fill_holes``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

from wspet.data.format import load_image, load_label, read_dataset
from wspet.io import write_csv
from wspet.metrics.summary import case_metrics, mean_std

POSTPROCESS_DIR = Path(__file__).resolve().parents[1] / "conf" / "postprocess"


def postprocess_step(name: str):
    """The callable of ``conf/postprocess/<name>.yaml``; only the project's own files are read."""
    known = sorted(path.stem for path in POSTPROCESS_DIR.glob("*.yaml"))
    if name not in known or name == "none":
        raise SystemExit(f"--postprocess {name!r}: choose one of {[k for k in known if k != 'none']}")
    return instantiate(OmegaConf.load(POSTPROCESS_DIR / f"{name}.yaml").fn)


def check_unprocessed(run: Path) -> None:
    """Refuse a run whose kept masks were already post-processed (its summary.json's ``postprocess``
    is not ``none``): their "without" column would hold the step's output, not the network's."""
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        return
    try:
        done = json.loads(summary_path.read_text()).get("postprocess", "none")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise SystemExit(f"{summary_path}: not a run summary ({error})") from None
    if done != "none":
        raise SystemExit(
            f"{summary_path}: the kept masks were post-processed with {done!r}; "
            "compare runs trained with postprocess=none"
        )


def scored_cases(run: Path, root: str, step) -> list[dict]:
    """One row per labelled test case with a kept mask: ``case``, ``dice_without``, ``dice_with``."""
    rows = []
    for case in read_dataset(root).test:
        mask_path = run / "predictions" / f"{case.name}_mask.nii.gz"
        if case.label is None or not mask_path.exists():
            continue
        image = load_image(case.image)
        label = load_label(case.label, image)
        mask = np.asarray(nib.load(str(mask_path)).dataobj) > 0
        if mask.shape != label.shape:
            raise SystemExit(f"{mask_path}: shape {mask.shape} is not the test image's {label.shape}")
        processed = np.asarray(step(mask, image.array, image.spacing), dtype=bool)
        rows.append({"case": case.name,
                     "dice_without": case_metrics(mask, label, image.spacing)["dice"],
                     "dice_with": case_metrics(processed, label, image.spacing)["dice"]})
    return rows


def summary(rows: list[dict], name: str) -> str:
    """The means of both columns and the paired difference, as one line."""
    differences = np.array([row["dice_with"] - row["dice_without"] for row in rows])
    mean, std = mean_std(differences)
    without = np.mean([row["dice_without"] for row in rows])
    with_step = np.mean([row["dice_with"] for row in rows])
    return (f"{len(rows)} cases: Dice {without:.3f} without, {with_step:.3f} with {name}; paired "
            f"{mean:+.3f} ± {std:.3f}, higher in {int((differences > 0).sum())}, lower in {int((differences < 0).sum())}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a training run's folder (holds predictions/)")
    parser.add_argument("root", help="the wspet dataset the run was tested on, with test labels")
    parser.add_argument("--postprocess", default="fill_holes", help="a file name of conf/postprocess/ (default fill_holes)")
    parser.add_argument("--csv", type=Path, help="write the per-case rows here (refused if it exists)")
    args = parser.parse_args(argv)
    check_unprocessed(args.run)
    rows = scored_cases(args.run, args.root, postprocess_step(args.postprocess))
    if not rows:
        raise SystemExit(f"{args.run}: no kept test mask has a label in {args.root}")
    for row in rows:
        print(f"{row['case']}: {row['dice_without']:.3f} -> {row['dice_with']:.3f}")
    print(summary(rows, args.postprocess))
    if args.csv is not None:
        if args.csv.exists():
            raise SystemExit(f"{args.csv} exists; give another --csv")
        write_csv(args.csv, rows, ["case", "dice_without", "dice_with"])


if __name__ == "__main__":
    main()
