"""Say when a run ended far from convergence, instead of reporting its numbers as if it had learnt.

A run given too few steps (a step budget cut short, a tiny data set counted in epochs) leaves a
model whose validation loss is still falling fast, or, for a weak loss, whose predictions are still
the boxes it was shown, or that never scored above the boxes themselves on the validation labels;
a stage with no validation at all (no step trained) shows nothing learnt either. All are visible in the validation history (:class:`wspet.training.callbacks.ValidationHistory`,
``{step: {"val/loss": ..., "val/box_agreement": ..., "val/dice": ..., "val/box_dice": ...}}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def still_improving(losses: list[float], tail: float = 0.25, share: float = 0.1) -> bool:
    """Whether the last ``tail`` of the validations brought more than ``share`` of the total gain.

    ``losses``: ``val/loss`` at each validation, in order. The gain is the fall from the first
    value to the best one; a converged run gains little at its end. Fewer than 4 validations, or
    no gain at all, say nothing (False).
    """
    if len(losses) < 4:
        return False
    cut = max(1, min(len(losses) - 1, round(len(losses) * (1 - tail))))
    best_before, best = min(losses[:cut]), min(losses)
    gain = losses[0] - best
    return gain > 0 and (best_before - best) > share * gain


def convergence_problems(
    history: Mapping[int, Mapping[str, float]],
    steps: int,
    tail: float = 0.25,
    share: float = 0.1,
    box_agreement: float = 0.9,
    watch_box: bool = False,
) -> list[str]:
    """Signs in a stage's validation ``history`` (by step) that it ended far from convergence.

    Args:
        steps: optimiser steps trained, for the message.
        tail, share: see :func:`still_improving`.
        box_agreement: above this Dice between prediction and box at the last validation the
            prediction is still the box.
        watch_box: for weak losses meant to shrink the boxes to lesions. Checks ``box_agreement``
            and, where validation labels were scored, that some validation's ``val/dice`` rose
            above ``val/box_dice``, the Dice of the boxes themselves with the labels.

    Returns one message per problem, each naming the setting to change; empty when none is seen.
    """
    if not 0 < tail < 1 or not 0 < share < 1 or not 0 < box_agreement <= 1:
        raise ValueError(f"tail {tail} and share {share} must lie in (0, 1), box_agreement {box_agreement} in (0, 1]")
    ordered = [history[step] for step in sorted(history)]
    losses = [v["val/loss"] for v in ordered if math.isfinite(v.get("val/loss", math.nan))]
    problems = []
    if not losses:
        problems.append(
            f"no validation recorded a finite val/loss in {steps} steps, so nothing shows that the model learnt; "
            "raise trainer.max_steps (0 trains nothing) or check trainer.limit_val_batches"
        )
    if still_improving(losses, tail, share):
        problems.append(
            f"val/loss was still falling fast after {steps} steps ({losses[0]:.4f} -> {min(losses):.4f}, "
            f"more than {share:.0%} of the fall in the last {tail:.0%} of validations); raise trainer.max_steps"
        )
    agreement = ordered[-1].get("val/box_agreement", math.nan) if ordered else math.nan
    if watch_box and agreement > box_agreement:
        problems.append(
            f"predictions are still the boxes after {steps} steps (Dice with the box {agreement:.3f} > "
            f"{box_agreement}); raise trainer.max_steps or check the loss"
        )
    scores = best_and_box_dice(ordered)
    if watch_box and scores is not None and scores[0] <= scores[1]:
        problems.append(
            f"predictions never scored above the boxes themselves on the validation labels in {steps} steps "
            f"(best val/dice {scores[0]:.3f}, the boxes' {scores[1]:.3f}): the model learnt less than the boxes "
            "hold; check the loss and its learning rate, or raise trainer.max_steps"
        )
    return problems


def best_and_box_dice(ordered: list[Mapping[str, float]]) -> tuple[float, float] | None:
    """The best ``val/dice`` of the validations, and the boxes' own Dice with the labels (``val/box_dice``).

    None when no validation scored both (no validation labels).
    """
    scored = [(v["val/dice"], v["val/box_dice"]) for v in ordered
              if math.isfinite(v.get("val/dice", math.nan)) and math.isfinite(v.get("val/box_dice", math.nan))]
    return (max(dice for dice, _ in scored), scored[-1][1]) if scored else None
