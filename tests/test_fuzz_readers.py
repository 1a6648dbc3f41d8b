"""Fuzz the readers: random or mutated dataset.json and NIfTI files raise DatasetError, never crash or hang.

Every test counts the cases it ran (about 250 in all); a case that takes more than
``HANG_SECONDS`` fails as a hang.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import signal
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wspet.data.check import validate_dataset
from wspet.data.format import DatasetError, DatasetWarning, Volume, load_image, load_label, read_dataset

HANG_SECONDS = 10
SHAPE = (8, 8, 6)
AFFINE = np.diag([3.5, 3.5, 3.1, 1.0])
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    def hang(signum, frame):
        raise TimeoutError(f"reader still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A one-case dataset (8 x 8 x 6) whose files the fuzzed dataset.json may point at."""
    root = tmp_path_factory.mktemp("fuzz")
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir()
    image = np.linspace(0.0, 9.0, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    label = np.zeros(SHAPE, np.uint8)
    label[2:5, 2:5, 1:4] = 1
    nib.save(nib.Nifti1Image(image, AFFINE), root / "imagesTr/a.nii.gz")
    nib.save(nib.Nifti1Image(image, AFFINE), root / "imagesTr/b.nii")
    nib.save(nib.Nifti1Image(label, AFFINE), root / "labelsTr/a.nii.gz")
    nib.save(nib.Nifti1Image(label, AFFINE), root / "labelsTr/b.nii")
    return root


# --------------------------------------------------------------------------- dataset.json

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=8)
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
PATHS = st.sampled_from([
    "imagesTr/a.nii.gz", "imagesTr/b.nii", "labelsTr/a.nii.gz", "labelsTr/b.nii", "imagesTr/../imagesTr/a.nii.gz",
    "../a.nii.gz", "/etc/passwd", "imagesTr", "imagesTr/", "", ".", "dataset.json", "imagesTr/x.nii.gz",
    "nul\x00.nii.gz", "a" * 300 + ".nii.gz", "imagesTr/a.nii.gz/", "~/a.nii.gz",
])
BOX = st.lists(st.integers(-12, 12) | st.integers(-(2**70), 2**70) | SCALARS, max_size=7)
ENTRY = st.one_of(
    st.fixed_dictionaries({}, optional={
        "image": PATHS | JSON, "label": PATHS | JSON, "boxes": st.lists(BOX, max_size=3) | JSON,
        "lesion_free": st.booleans() | JSON, "extra": JSON,
    }),
    PATHS, JSON,
)
DOCUMENT = st.one_of(
    st.fixed_dictionaries({}, optional={
        "training": st.lists(ENTRY, max_size=4) | JSON, "test": st.lists(ENTRY, max_size=3) | JSON,
        "numTraining": JSON, "name": JSON,
    }),
    JSON,
)


def check_index(root: Path) -> str:
    """Read and validate ``root``; return the outcome; fail on any exception but DatasetError."""
    with no_hang(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        report = validate_dataset(root)  # never raises for a bad dataset
        try:
            index = read_dataset(root)
        except DatasetError as error:
            assert str(error) and error.problems
            assert not report.ok
            return "refused"
    for case in index.training + index.test:
        assert case.image.is_file() and case.image.is_relative_to(index.root)
    return "read" if report.ok else "read, volumes refused"


def test_fuzz_dataset_json_structures(tiny):
    outcomes: list[str] = []

    @settings(FUZZ, max_examples=120)
    @given(DOCUMENT)
    def run(document):
        (tiny / "dataset.json").write_text(json.dumps(document))
        outcomes.append(check_index(tiny))

    run()
    assert len(outcomes) >= 120
    assert {"refused", "read"} <= set(outcomes)  # the fuzz reached both sides of the reader
    print(f"\ndataset.json structures: {len(outcomes)} cases, outcomes {sorted(set(outcomes))}")


def test_fuzz_dataset_json_bytes(tiny):
    outcomes: list[str] = []
    valid = json.dumps({"training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}]}).encode()
    cut_short = st.builds(lambda cut, tail: valid[:cut] + tail, st.integers(0, len(valid)), st.binary(max_size=4))

    @settings(FUZZ, max_examples=40)
    @given(st.binary(max_size=200) | cut_short)
    def run(raw):
        (tiny / "dataset.json").write_bytes(raw)
        outcomes.append(check_index(tiny))

    run()
    assert len(outcomes) >= 40
    print(f"\ndataset.json bytes: {len(outcomes)} cases")


def test_deeply_nested_json_is_refused(tiny):
    (tiny / "dataset.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetError, match="dataset.json: not valid JSON: nested too deeply"):
        read_dataset(tiny)


# --------------------------------------------------------------------------- NIfTI files


def check_volume(path: Path, reference: Volume) -> str:
    """Load ``path`` as an image and as a label; fail on anything but DatasetError or a sound volume."""
    outcomes = []
    with no_hang(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        for kind in ("image", "label"):
            try:
                if kind == "image":
                    volume = load_image(path)
                    assert volume.array.ndim == 3 and volume.array.dtype == np.float32
                    assert np.isfinite(volume.array).all() and min(volume.spacing) > 0
                else:
                    label = load_label(path, reference)
                    assert label.shape == reference.array.shape and set(np.unique(label)) <= {0, 1}
                outcomes.append("read")
            except DatasetError as error:
                assert str(error).startswith(str(path)), str(error)
                outcomes.append("refused")
    return "/".join(outcomes)


def mutate(raw: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(raw)
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data[:cut] if cut is not None else data)


HEADER_EDIT = st.tuples(st.integers(0, 351) | st.integers(0, 10_000), st.integers(0, 255))


def test_fuzz_mutated_nifti(tiny, tmp_path):
    """Valid image and label files with bytes changed (mostly in the 348-byte header) or cut short."""
    reference = load_image(tiny / "imagesTr/a.nii.gz")
    sources = {name: (tiny / name).read_bytes() for name in ("imagesTr/b.nii", "labelsTr/b.nii")}
    sources["gz"] = (tiny / "imagesTr/a.nii.gz").read_bytes()
    outcomes: list[str] = []

    @settings(FUZZ, max_examples=100)
    @given(
        st.sampled_from(sorted(sources)),
        st.lists(HEADER_EDIT, min_size=1, max_size=6),
        st.none() | st.integers(0, 3000),
        st.booleans(),
    )
    def run(source, edits, cut, recompress):
        raw = mutate(sources[source], edits, cut)
        if source == "gz":  # mutate the decompressed file, then gzip it again (or not: a bad stream)
            raw = mutate(gzip.decompress(sources["gz"]), edits, cut)
            raw = gzip.compress(raw) if recompress else mutate(sources["gz"], edits, cut)
        path = tmp_path / ("case.nii.gz" if source == "gz" else "case.nii")
        path.write_bytes(raw)
        outcomes.append(check_volume(path, reference))

    run()
    assert len(outcomes) >= 100
    assert "refused/refused" in outcomes
    print(f"\nmutated NIfTI: {len(outcomes)} cases, outcomes {sorted(set(outcomes))}")


def test_fuzz_random_bytes_as_nifti(tiny, tmp_path):
    reference = load_image(tiny / "imagesTr/a.nii.gz")
    header = (tiny / "imagesTr/b.nii").read_bytes()[:352]
    outcomes: list[str] = []

    @settings(FUZZ, max_examples=40)
    @given(st.binary(max_size=2000), st.sampled_from([".nii", ".nii.gz"]), st.booleans())
    def run(raw, suffix, keep_header):
        path = tmp_path / f"random{suffix}"
        raw = header + raw if keep_header else raw  # a valid header over random voxels, or noise
        path.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" and keep_header else raw)
        outcomes.append(check_volume(path, reference))

    run()
    assert len(outcomes) >= 40
    print(f"\nrandom bytes as NIfTI: {len(outcomes)} cases, outcomes {sorted(set(outcomes))}")
