"""Predict lesion masks for new PET scans: `python predict.py ckpt=... input=... output=...`.

`input` is a NIfTI file, a folder of them, a dataset folder or a DICOM PET series folder; see
docs/prediction.md for the outputs (mask, lesion CSV, MIP picture, SUV volume).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("WSPET_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from wspet.inference.predict import predict  # noqa: E402


REQUIRED = ("ckpt", "input", "output")
USAGE = (
    "usage: python predict.py ckpt=CHECKPOINT input=SCAN_OR_FOLDER output=OUT_FOLDER "
    "[overwrite=true] [split=test] [device=cpu] ...  (docs/prediction.md; --help lists every setting)"
)


def missing_arguments(argv: list[str]) -> list[str]:
    """The required settings not given as ``key=value`` overrides in ``argv``."""
    given = {argument.split("=", 1)[0].lstrip("+~") for argument in argv if "=" in argument}
    return [key for key in REQUIRED if key not in given]


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        predict(cfg)
    except (ValueError, OSError) as error:  # bad input: the message names the file; no traceback
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    # Hydra would fail on ${output} in hydra.run.dir with an AssertionError traceback.
    missing = missing_arguments(sys.argv[1:])
    if missing and not any(argument.startswith("-") for argument in sys.argv[1:]):
        print(f"{USAGE}\nerror: missing {', '.join(f'{key}=' for key in missing)}", file=sys.stderr)
        sys.exit(2)
    main()
