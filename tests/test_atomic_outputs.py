"""Nothing lost: a writer killed mid-write leaves whole files or none, and inputs are never overwritten.

The SIGKILL tests run this very file as the writer (``python tests/test_atomic_outputs.py OUT MODE``):
it writes 6 MB NIfTI volumes in a loop over three names, so the kill lands while a file is
being written. Every final file must then load in full with the content it was written with.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (128, 128, 96)  # 6 MB of float32 noise: ~0.3 s to gzip, a wide window for the kill
NAMES = 3


def content(i: int) -> np.ndarray:
    """The volume of write number ``i``: seeded noise with ``i`` in voxel (0, 0, 0)."""
    array = np.random.default_rng(i).random(SHAPE, dtype=np.float32)
    array[0, 0, 0] = i
    return array


def write_forever(out: Path, mode: str) -> None:
    from wspet.io import save_nifti

    for i in range(10**6):
        target = out / f"mask_{i % NAMES}.nii.gz"
        print(f"start {i}", flush=True)
        if mode == "atomic":
            save_nifti(content(i), np.eye(4), target)
        else:  # the unsafe way, for the control: nibabel straight into the final name
            nib.save(nib.Nifti1Image(content(i), np.eye(4)), target)
        print(f"done {i}", flush=True)


def is_complete(path: Path) -> bool:
    """Whether ``path`` loads in full and holds exactly what write number voxel (0, 0, 0) wrote."""
    try:
        array = np.asarray(nib.load(path).dataobj)
    except Exception:
        return False
    return array.shape == SHAPE and np.array_equal(array, content(int(array[0, 0, 0])))


def start_writer(out: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, str(out), mode],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )


def kill_while_writing(writer: subprocess.Popen, out: Path, after_start: int, watch) -> bool:
    """SIGKILL ``writer`` once write ``after_start`` began and ``watch(out)`` sees a partial file.

    Returns whether a partial file was seen (False: the writer died or the wait timed out).
    """
    for line in writer.stdout:
        if line.strip() == f"start {after_start}":
            break
    deadline = time.monotonic() + 20
    seen = False
    while time.monotonic() < deadline and writer.poll() is None:
        if watch(out):
            seen = True
            break
        time.sleep(0.002)
    writer.kill()  # SIGKILL: no cleanup handler runs
    writer.wait(timeout=20)
    writer.stdout.close()
    return seen


def temporaries(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name.startswith(".") and p.stat().st_size > 0]


def test_sigkill_during_save_nifti_leaves_only_whole_files(tmp_path):
    kills_mid_write = 0
    for round_, after_start in enumerate((1, 2, 4)):
        writer = start_writer(tmp_path, "atomic")
        kills_mid_write += kill_while_writing(writer, tmp_path, after_start, lambda out: bool(temporaries(out)))
        finals = sorted(p for p in tmp_path.iterdir() if not p.name.startswith("."))
        assert finals, f"round {round_}: no file was written"
        assert all(p.name.startswith("mask_") and p.name.endswith(".nii.gz") for p in finals)
        incomplete = [p.name for p in finals if not is_complete(p)]
        assert incomplete == [], f"round {round_}: truncated final files {incomplete}"
    assert kills_mid_write == 3  # each kill hit a write in progress (its temporary was on disk)


def test_the_check_catches_a_writer_that_is_not_atomic(tmp_path):
    """Control: the same kill on nibabel writing straight to the final name leaves a truncated file."""
    target = tmp_path / "mask_1.nii.gz"
    writer = start_writer(tmp_path, "plain")
    assert kill_while_writing(writer, tmp_path, 1, lambda out: target.exists() and target.stat().st_size > 0)
    assert is_complete(tmp_path / "mask_0.nii.gz")
    assert not is_complete(target)


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    from wspet.io import atomic_path, save_nifti

    target = save_nifti(np.ones((4, 4, 4), np.uint8), np.eye(4), tmp_path / "mask.nii.gz")
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("disk full")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]
    save_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), target)  # a completed write replaces it
    assert np.asarray(nib.load(target).dataobj).sum() == 0


def test_predict_refuses_to_write_over_inputs_or_existing_masks(tmp_path):
    from wspet.inference.predict import find_inputs, plan_jobs

    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), scans / f"{name}.nii.gz")
    # an input named like the mask of another input, in the output folder itself
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), scans / "a_mask.nii.gz")
    inputs = find_inputs(scans)
    assert [name for name, _ in inputs] == ["a", "a_mask", "b"]
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"a_mask.nii.gz: would overwrite an input image"):
            plan_jobs(inputs, scans, overwrite=overwrite)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_mask.nii.gz").write_bytes(b"an earlier result")
    with pytest.raises(FileExistsError, match=r"b_mask.nii.gz: exists \(pass overwrite=true to replace it\)"):
        plan_jobs(inputs, out, overwrite=False)
    jobs = plan_jobs(inputs, out, overwrite=True)
    assert [job.output.name for job in jobs] == ["a_mask.nii.gz", "a_mask_mask.nii.gz", "b_mask.nii.gz"]
    assert (out / "b_mask.nii.gz").read_bytes() == b"an earlier result"  # planning writes nothing


def write_source_cases(src: Path, n: int) -> dict[str, np.ndarray]:
    """``src/<case>/PET_image.nii.gz`` (6 MB of noise) and ``PET_mask.nii.gz`` (a cube), the sts layout."""
    arrays = {}
    for i in range(n):
        folder = src / f"case{i}"
        folder.mkdir(parents=True)
        image = content(100 + i)
        mask = np.zeros(SHAPE, np.uint8)
        mask[40:60, 40:60, 30:50] = 1
        nib.save(nib.Nifti1Image(image, np.diag([3.5, 3.5, 3.1, 1.0])), folder / "PET_image.nii.gz")
        nib.save(nib.Nifti1Image(mask, np.diag([3.5, 3.5, 3.1, 1.0])), folder / "PET_mask.nii.gz")
        arrays[f"case{i}"] = image
    return arrays


def test_sigkill_during_conversion_leaves_only_whole_files(tmp_path):
    if importlib.util.find_spec("wspet.datasets.convert") is None:
        pytest.skip("wspet/datasets/convert.py does not exist yet (another helper writes it); nothing to kill")
    src, out = tmp_path / "src", tmp_path / "out"
    sources = write_source_cases(src, 4)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    converter = subprocess.Popen(
        [sys.executable, "-u", "-m", "wspet.datasets.convert", str(src), str(out), "--layout", "sts", "--test-fraction", "0.5"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )

    def partial(parent: Path) -> bool:  # the second case's image being written, in the set built beside OUT
        folders = [s / f for s in parent.glob(".out.new-*") for f in ("imagesTr", "imagesTs") if (s / f).is_dir()]
        finals = [p for f in folders for p in f.iterdir() if not p.name.startswith(".")]
        return len(finals) >= 1 and any(temporaries(f) for f in folders)

    assert kill_when(converter, tmp_path, partial), "no write in progress was seen"
    assert not out.exists()  # the set appears at OUT only whole
    (staging,) = tmp_path.glob(".out.new-*")
    finals = [p for p in staging.rglob("*.nii.gz") if not p.name.startswith(".")]  # pathlib globs match dot files
    images = [p for p in finals if p.parent.name.startswith("images")]
    labels = [p for p in finals if p.parent.name.startswith("labels")]
    assert images, "the kill came before any image was written"
    for path in images:  # whole, and the very voxels of the source
        assert np.array_equal(np.asarray(nib.load(path).dataobj), sources[path.name.removesuffix(".nii.gz")])
    for path in labels:
        assert int(np.asarray(nib.load(path).dataobj).sum()) == 20 * 20 * 20
    assert not (staging / "dataset.json").exists()  # written last: the unfinished folder says so
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # inputs untouched


def kill_when(process: subprocess.Popen, out: Path, partial) -> bool:
    """SIGKILL ``process`` as soon as ``partial(out)`` holds; return whether it did (or timed out)."""
    deadline = time.monotonic() + 60
    seen = False
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_dir() and partial(out):
            seen = True
            break
        time.sleep(0.002)
    process.kill()
    process.wait(timeout=20)
    process.stdout.close()
    return seen


def test_sigkill_during_predict_leaves_only_whole_masks(tmp_path):
    import lightning as L
    import torch

    from wspet.model.module import LesionSegmenter

    torch.manual_seed(0)
    model = LesionSegmenter(net={"features": [4, 8]}, loss={"_target_": "wspet.losses.DiceLoss"})
    trainer = L.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    checkpoint = tmp_path / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    inputs, shape = tmp_path / "scans", (192, 192, 96)
    inputs.mkdir()
    for i in range(12):
        image = np.random.default_rng(i).gamma(2.0, 0.5, size=shape).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), inputs / f"scan_{i:02d}.nii.gz")
    seen = False
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        predictor = subprocess.Popen(
            [sys.executable, "predict.py", f"ckpt={checkpoint}", f"input={inputs}", f"output={out}",
             "window=[96,96,96]", "overlap=[0,0,0]", "device=cpu"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=Path(__file__).resolve().parents[1],
        )
        seen = kill_when(predictor, out, lambda o: bool(temporaries(o)))
        masks = [p for p in out.glob("*_mask.nii.gz") if not p.name.startswith(".")] if out.is_dir() else []
        for path in masks:  # every final mask is whole: it loads in full, on the input's grid
            assert np.asarray(nib.load(path).dataobj).shape == shape
        if seen:
            break
    assert seen, "no mask write in progress was seen in three tries"


if __name__ == "__main__":
    write_forever(Path(sys.argv[1]), sys.argv[2])


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_get_the_mode_the_umask_gives_not_mkstemps_private_one(tmp_path, umask, expected):
    from wspet.io import save_nifti, write_text

    previous = os.umask(umask)
    try:
        text = write_text(tmp_path / "summary.json", "{}\n")
        mask = save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "mask.nii.gz")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(text.stat().st_mode) == expected
    assert stat.S_IMODE(mask.stat().st_mode) == expected
