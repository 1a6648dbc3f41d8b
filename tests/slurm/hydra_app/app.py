"""Stand-in Hydra app for the Slurm launcher tests (tests/slurm): no training, just evidence.

Writes `started.json` (attempt number, Slurm ids) when it begins and `result.json` (x, 10 * x,
attempt, Slurm ids) when done, both in the run's output dir, and returns 10 * x. With
`sleep_s > 0` its first attempt sleeps in between, so that a test can cancel or pre-empt it while
it runs; a requeued attempt finds `started.json` and, like a resumed training, finishes at once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

# The app's config puts the repository's conf/ on Hydra's search path through this variable.
os.environ["WSPET_CONF_DIR"] = str(Path(__file__).resolve().parents[3] / "conf")


def _slurm_ids() -> dict[str, str | None]:
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")
    return {k: os.environ.get(k) for k in keys}


@hydra.main(version_base="1.3", config_path=".", config_name="slurm_test_app")
def main(cfg: DictConfig) -> int:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    started = out_dir / "started.json"
    attempt = json.loads(started.read_text())["attempt"] + 1 if started.exists() else 1
    started.write_text(json.dumps({"attempt": attempt, **_slurm_ids()}))
    if attempt == 1:
        time.sleep(float(cfg.sleep_s))
    result = {"x": cfg.x, "y": 10 * cfg.x, "attempt": attempt, **_slurm_ids()}
    (out_dir / "result.json").write_text(json.dumps(result))
    return result["y"]


if __name__ == "__main__":
    main()
