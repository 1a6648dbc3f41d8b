"""How experiments of a sweep compare: paired differences over the same test cases, and means per seed.

Rows are the report's (``experiment``, ``seed``, ``case`` and the metrics). Two experiments are
paired on each ``(case, seed)`` both have; a reference row (seed ``None``: the same for every seed)
pairs with every seed of the other. A paired difference says more than two means' difference: the
cases are shared, so their own difficulty cancels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wspet.metrics.summary import mean_std

Row = dict[str, Any]


@dataclass(frozen=True)
class PairedDifference:
    """``first - second`` over ``n`` paired results: mean, sample std, and how often ``first`` is higher."""

    first: str
    second: str
    metric: str
    n: int
    mean: float
    std: float
    first_higher: int


def _by_case_and_seed(rows: Sequence[Row], experiment: str, metric: str) -> dict[tuple[str, Any], float]:
    return {(r["case"], r["seed"]): float(r[metric]) for r in rows if r["experiment"] == experiment}


def _pairs(a: dict[tuple[str, Any], float], b: dict[tuple[str, Any], float]) -> list[tuple[float, float]]:
    """(first, second) values on each shared case and seed; a seedless (reference) side pairs with every seed."""
    if a and all(seed is None for _, seed in a):
        return [(a[(case, None)], value) for (case, _), value in sorted(b.items(), key=str) if (case, None) in a]
    return [
        (value, b[(case, seed)] if (case, seed) in b else b[(case, None)])
        for (case, seed), value in sorted(a.items(), key=str)
        if (case, seed) in b or (case, None) in b
    ]


def paired_difference(rows: Sequence[Row], first: str, second: str, metric: str = "dice") -> PairedDifference:
    """``first - second`` on every (case, seed) both have; ValueError naming the experiments when none is shared."""
    pairs = _pairs(_by_case_and_seed(rows, first, metric), _by_case_and_seed(rows, second, metric))
    if not pairs:
        raise ValueError(f"experiments {first!r} and {second!r} share no (case, seed) result to pair")
    differences = [x - y for x, y in pairs]
    mean, std = mean_std(differences)
    return PairedDifference(first, second, metric, len(pairs), mean, std, sum(d > 0 for d in differences))


def paired_markdown(rows: Sequence[Row], pairs: Sequence[tuple[str, str]], metric: str = "dice") -> str:
    """A Markdown table of :func:`paired_difference` for each ``(first, second)`` that both exist in ``rows``."""
    present = {r["experiment"] for r in rows}
    lines = [f"| comparison | {metric} difference (mean ± std) | first higher in |", "|---|---|---|"]
    for first, second in pairs:
        if first not in present or second not in present:
            continue
        try:
            d = paired_difference(rows, first, second, metric)
        except ValueError:  # e.g. different seeds: nothing to pair, and the table says so
            lines.append(f"| {first} − {second} | no shared (case, seed) result | – |")
            continue
        spread = f" ± {d.std:.3f}" if d.std == d.std else ""
        lines.append(f"| {first} − {second} | {d.mean:+.3f}{spread} | {d.first_higher} / {d.n} |")
    return "\n".join(lines) + "\n"


def per_seed_markdown(rows: Sequence[Row], experiments: Sequence[str], metric: str = "dice") -> str:
    """A Markdown table of each learned experiment's mean ``metric`` per seed (reference rows have no seed)."""
    seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
    lines = [f"| experiment | {' | '.join(f'seed {s}' for s in seeds)} |", "|---" * (len(seeds) + 1) + "|"]
    for name in experiments:
        cells = []
        for seed in seeds:
            values = [float(r[metric]) for r in rows if r["experiment"] == name and r["seed"] == seed]
            cells.append(f"{mean_std(values)[0]:.3f}" if values else "–")
        if any(cell != "–" for cell in cells):
            lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
