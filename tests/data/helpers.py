"""Dataset edits shared by the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def store_in_other_axes(root: Path, name: str, codes: str, split: str = "Tr") -> None:
    """Store case ``name``'s image and label with their axes turned from RAS to ``codes`` (the same
    world points, so the same case), and drop its boxes, which were given in the old voxel axes."""
    turn = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(codes))
    for folder in (f"images{split}", f"labels{split}"):
        path = root / folder / f"{name}.nii.gz"
        old = nib.load(path)
        array = np.asarray(old.dataobj)
        affine = old.affine @ nib.orientations.inv_ornt_aff(turn, array.shape)
        nib.save(nib.Nifti1Image(nib.orientations.apply_orientation(array, turn), affine), path)
    drop_boxes(root, name)


def drop_boxes(root: Path, name: str) -> None:
    """Remove case ``name``'s boxes from dataset.json: they are then derived from its label."""
    index = json.loads((root / "dataset.json").read_text())
    for entry in index["training"] + index.get("test", []):
        if isinstance(entry, dict) and Path(entry["image"]).name == f"{name}.nii.gz":
            entry.pop("boxes", None)
    (root / "dataset.json").write_text(json.dumps(index))
