"""Evaluation: a model on a dataset split, the sweep report, its reference rows and overlay pictures."""
