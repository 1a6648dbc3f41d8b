"""One training step in float32 and under bf16 autocast, on the kernels this process may use.

Emulates an AVX2-only CPU on a newer one, with the two switches that limit what PyTorch and oneDNN
dispatch (docs/performance.md):

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python scripts/bf16_step_cost.py --threads 2 --size 48

Prints torch's CPU capability, what ``trainer.precision=auto`` resolves to, and the median step
times (the bench's bare step: the default model and loss, gradient clipping, Adam).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from wspet.bench import FULL, bare_step, bench_config, data_module, first_batch, median_seconds
from wspet.datasets.phantom import write_phantom_dataset
from wspet.model.precision import denormals_flushed, resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=48, help="cubic patch side, batch 2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = replace(FULL, repeats=args.repeats, warmup=1)
    device = torch.device("cpu")
    choice = resolve_precision("auto", "cpu")
    print(f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"auto = {choice.precision} ({choice.reason})")
    seconds = {}
    with tempfile.TemporaryDirectory() as folder, denormals_flushed():
        root = Path(folder) / "phantom"
        write_phantom_dataset(root, n_train=5, n_test=1, seed=0, shape=(64, 64, 64))
        for precision in ("32-true", "bf16-mixed"):
            cfg = bench_config(root, (args.size,) * 3, 2, settings, precision)
            image, target = first_batch(data_module(cfg), cfg.loss.supervision, device)
            seconds[precision] = median_seconds(bare_step(cfg, image, target), settings, device)
    print(f"{args.size}^3 batch 2, {args.threads} threads: float32 {seconds['32-true']:.3f} s, "
          f"bf16 autocast {seconds['bf16-mixed']:.3f} s ({seconds['bf16-mixed'] / seconds['32-true']:.2f}x the time)")


if __name__ == "__main__":
    main()
