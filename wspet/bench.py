"""Benchmarks (`make bench` / `python -m wspet.bench`): speed and memory of training and inference.

Each case runs in its own process, so its peak resident memory is its own; times are medians over
``--repeats`` runs after a warm-up. Ratios compare cases measured in the same invocation only:
the machines are shared, so absolute seconds vary from run to run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from wspet.losses import CompositeLoss
from wspet.model.unet3d import UNet3D


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time(step: Callable[[], None], repeats: int) -> list[float]:
    step()  # warm-up: allocator and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def train_step_case(size: tuple[int, int, int], batch: int, channels_last: bool, repeats: int) -> dict:
    """One optimiser step of the paper's U-Net with the composite loss."""
    torch.manual_seed(0)
    net = UNet3D()
    image = torch.randn(batch, 1, *size)
    box = torch.zeros_like(image)
    box[..., size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2, size[2] // 4 : size[2] // 2] = 1
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        image = image.contiguous(memory_format=torch.channels_last_3d)
    loss_fn = CompositeLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step() -> None:
        probs = net.probabilities(image)
        loss = loss_fn(image, probs, box)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"seconds": _time(step, repeats)}


def inference_case(size: tuple[int, int, int], window: tuple[int, int, int], repeats: int) -> dict:
    """Sliding-window prediction of a whole volume."""
    from wspet.inference import predict_probabilities
    from wspet.module import LesionSegmenter

    torch.manual_seed(0)
    model = LesionSegmenter(net={}, loss={"_target_": "wspet.losses.DiceLoss"})
    image = np.random.default_rng(0).gamma(2.0, 0.5, size=size).astype(np.float32)
    overlap = tuple(w // 8 * 2 for w in window)  # a quarter of the window, even

    def step() -> None:
        predict_probabilities(model, image, np.eye(4), window=window, overlap=overlap, batch_size=1)

    return {"seconds": _time(step, repeats)}


def _run_case(queue, name: str, kind: str, kwargs: dict, threads: int) -> None:
    torch.set_num_threads(threads)
    result = (train_step_case if kind == "train" else inference_case)(**kwargs)
    result.update(name=name, peak_rss_mb=_peak_rss_mb())
    queue.put(result)


def run_case(name: str, kind: str, threads: int, **kwargs) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_case, args=(queue, name, kind, kwargs, threads))
    process.start()
    result = queue.get()
    process.join()
    result["median_s"] = statistics.median(result["seconds"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wspet.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smaller volumes, for a check of the harness")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    patch = (32, 32, 32) if args.quick else (64, 64, 64)
    volume = (64, 64, 48) if args.quick else (128, 128, 267)  # the whole-body STS_001 grid
    window = (32, 32, 32) if args.quick else (96, 96, 64)
    cases = [
        ("train step fp32", "train", {"size": patch, "batch": 1, "channels_last": False}),
        ("train step fp32 channels_last_3d", "train", {"size": patch, "batch": 1, "channels_last": True}),
        ("sliding-window inference", "inference", {"size": volume, "window": window}),
    ]
    results = []
    for name, kind, kwargs in cases:
        result = run_case(name, kind, args.threads, repeats=args.repeats, **kwargs)
        results.append(result)
        print(f"{name:<36} median {result['median_s']:7.2f} s  peak RSS {result['peak_rss_mb']:7.0f} MB  ({kwargs})")
    ratio = results[0]["median_s"] / results[1]["median_s"]
    print(f"channels_last_3d speed-up over fp32 (same run): {ratio:.2f}x")
    if args.json:
        from wspet.io import write_text

        write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
