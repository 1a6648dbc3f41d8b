"""Train and evaluate a wspet experiment: `python train.py loss=mdice_ms` (see README.md)."""

import os
from pathlib import Path

os.environ.setdefault("WSPET_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from wspet.training.experiment import train  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; return ``optimized_metric`` on validation (never a test value) for a Hydra sweeper."""
    summary = train(cfg)
    return summary.get("validation", {}).get("value")


if __name__ == "__main__":
    main()
