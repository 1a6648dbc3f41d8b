"""Compare a predict.py mask of a DICOM scan with a clinician's RTSTRUCT contour (docs/results/sts-real.md).

    python scripts/compare_with_rtstruct.py SERIES_DIR RTSTRUCT.dcm ROI_NAME MASK.nii.gz

Prints the whole-scan Dice, the measurements (wspet.inference.measurements) of the reference contour and of
the predicted lesions that overlap it, and how many predicted lesions lie elsewhere and their volume.
"""

from __future__ import annotations

import sys

import nibabel as nib
import numpy as np
from scipy import ndimage

from wspet.datasets.dicom import read_pet_series
from wspet.datasets.rtstruct import rasterise_roi
from wspet.inference.measurements import lesion_table
from wspet.metrics import dice_score

KEYS = ("n_voxels", "volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg")


def main(series: str, rtstruct: str, roi: str, mask_path: str) -> None:
    pet = read_pet_series(series)
    truth = rasterise_roi(rtstruct, roi, pet) > 0
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    if mask.shape != truth.shape:
        raise SystemExit(f"{mask_path}: shape {mask.shape} != the series' {truth.shape}")
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    touching = sorted(set(np.unique(components[truth])) - {0})
    overlapping = np.isin(components, touching)
    print(f"Dice of the whole mask with {roi}: {dice_score(mask, truth):.3f}")
    print(f"Dice of the lesions touching {roi}: {dice_score(overlapping, truth):.3f}")
    print(f"predicted lesions: {count} ({len(touching)} touching {roi}, {count - len(touching)} elsewhere)")
    for name, region in ((f"reference {roi}", truth), ("predicted, touching it", overlapping)):
        for row in lesion_table(region, pet.suv, pet.affine):
            print(f"{name:<24}" + "  ".join(f"{key} {row[key]:.4g}" for key in KEYS))
    elsewhere = lesion_table(mask & ~overlapping, pet.suv, pet.affine)
    print(f"false positives: {len(elsewhere)} lesions, {sum(r['volume_ml'] for r in elsewhere):.1f} ml")
    for row in sorted(elsewhere, key=lambda r: -r["volume_ml"])[:5]:
        print(f"  elsewhere: {row['volume_ml']:.1f} ml, SUVmax {row['suv_max']:.2f}, centroid z {row['centroid_z_mm']:.0f} mm")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
