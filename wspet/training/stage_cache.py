"""Reuse trained stages across the runs of a sweep.

The paper's ablation trains the same network many times over: the box-Dice stage starts
`mdice`, `mdice_ms` and `mdice_ms_morph`; `dice` and `dice_levelset` (and `mdice_ms` and
`mdice_ms_morph`) differ only after training, in post-processing. A stage's weights depend only
on the settings below, so a sweep that shares a cache folder trains each distinct stage once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wspet.io import atomic_path, write_text

log = logging.getLogger(__name__)

# What a stage's weights depend on, less what only changes logging or speed.
TRAINING_KEYS = ("seed", "data", "model", "loss", "trainer", "callbacks")
NOT_TRAINING = {
    "data": ("val_labels", "num_workers", "phantom"),
    "model": ("init_from",),  # replaced by the hash of the checkpoint's bytes
    "trainer": ("enable_progress_bar", "enable_model_summary", "log_every_n_steps"),
}


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_key(cfg: DictConfig, init_from: str | Path | None) -> str:
    """A hash of everything that decides the stage's weights: settings, data index, initial weights."""
    settings = {key: OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg[key], DictConfig) else cfg[key]
                for key in TRAINING_KEYS}
    for group, keys in NOT_TRAINING.items():
        for key in keys:
            settings[group].pop(key, None)
    settings["dataset_json"] = file_digest(Path(cfg.data.root) / "dataset.json")
    settings["init_from"] = file_digest(init_from) if init_from else None
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class StageCache:
    """A folder of trained stages: ``<root>/<key>/best.ckpt`` and its SHA-256, ``best.ckpt.sha256``.

    An entry is reused only when the checkpoint's bytes still hash to the digest recorded when
    it was stored: a checkpoint replaced, truncated or planted without a digest is not reused
    (the stage is trained again and stored anew). Reused checkpoints are still read weights-only
    (``wspet.model.module.load_checkpoint``): a digest says the file is the one stored, not that it is safe.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def lookup(self, key: str) -> Path | None:
        """The entry's checkpoint if present and matching its recorded digest, else None (logged)."""
        checkpoint = self.root / key / "best.ckpt"
        if not checkpoint.is_file():
            return None
        recorded = _recorded_digest(digest_path(checkpoint))
        if recorded is None:
            log.warning("stage cache %s: no recorded SHA-256 in %s; not reusing it", checkpoint, digest_path(checkpoint))
            return None
        actual = file_digest(checkpoint)
        if actual != recorded:
            log.warning("stage cache %s: SHA-256 %s differs from the recorded %s; not reusing it",
                        checkpoint, actual, recorded)
            return None
        return checkpoint

    def store(self, key: str, checkpoint: str | Path) -> Path:
        """Copy ``checkpoint`` into the cache atomically (parallel jobs may store the same key), then its digest."""
        target = self.root / key / "best.ckpt"
        with atomic_path(target) as tmp:
            shutil.copyfile(checkpoint, tmp)
            digest = file_digest(tmp)
        write_text(digest_path(target), digest + "\n")
        log.info("stored stage %s in %s (SHA-256 %s)", key, target, digest)
        return target


def digest_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".sha256")


def _recorded_digest(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None
