"""wspet.evaluation.comparisons: paired differences over shared (case, seed) results, and means per seed."""

from __future__ import annotations

import math

import pytest

from wspet.evaluation.comparisons import paired_difference, paired_markdown, per_seed_markdown


def rows() -> list[dict]:
    out = []
    for seed, (a, b) in enumerate([((0.8, 0.6, 0.5), (0.7, 0.7, 0.4)), ((0.9, 0.5, 0.6), (0.6, 0.5, 0.5))]):
        for case, (x, y) in zip(("c1", "c2", "c3"), zip(a, b)):
            out.append({"experiment": "pseudo", "seed": seed, "case": case, "dice": x})
            out.append({"experiment": "fs", "seed": seed, "case": case, "dice": y})
    out += [{"experiment": "box_threshold", "seed": None, "case": c, "dice": v} for c, v in (("c1", 0.85), ("c2", 0.65), ("c3", 0.55))]
    return out


def test_paired_difference_over_shared_cases_and_seeds():
    d = paired_difference(rows(), "pseudo", "fs")
    differences = [0.1, -0.1, 0.1, 0.3, 0.0, 0.1]
    assert d.n == 6 and d.first_higher == 4
    assert d.mean == pytest.approx(sum(differences) / 6)
    mean = sum(differences) / 6
    assert d.std == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in differences) / 5))


def test_a_reference_row_pairs_with_every_seed_either_way_round():
    forward = paired_difference(rows(), "pseudo", "box_threshold")
    backward = paired_difference(rows(), "box_threshold", "pseudo")
    assert forward.n == backward.n == 6
    assert forward.mean == pytest.approx(-backward.mean)
    assert forward.first_higher + backward.first_higher <= 6


def test_experiments_with_nothing_to_pair_are_refused_by_name():
    with pytest.raises(ValueError, match="'pseudo' and 'nope'"):
        paired_difference(rows(), "pseudo", "nope")


def test_markdown_tables_skip_missing_rows_and_show_each_seed():
    other_seed = [{"experiment": "mdice", "seed": 7, "case": "c1", "dice": 0.5}]
    table = paired_markdown(rows() + other_seed, [("pseudo", "fs"), ("pseudo", "absent"), ("pseudo", "mdice")])
    assert "| pseudo − fs | +0.083 ± 0.133 | 4 / 6 |" in table and "absent" not in table
    assert "| pseudo − mdice | no shared (case, seed) result | – |" in table
    seeds = per_seed_markdown(rows(), ["fs", "pseudo"])
    assert "| pseudo | 0.633 | 0.667 |" in seeds and "seed 0 | seed 1" in seeds
