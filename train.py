"""Train and evaluate a wspet experiment: `python train.py loss=mdice_ms` (see README.md)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("WSPET_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from wspet.training.experiment import train  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; return ``optimized_metric`` on validation (never a test value) for a Hydra sweeper."""
    try:
        summary = train(cfg)
    except (ValueError, OSError) as error:  # bad input or setting: the message names the file or the key
        # In a sweep the job fails as Hydra reports it (an Optuna trial is marked failed and the
        # study goes on); HYDRA_FULL_ERROR=1 asks for the traceback.
        if HydraConfig.get().mode == RunMode.MULTIRUN or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    return summary.get("validation", {}).get("value")


if __name__ == "__main__":
    main()
