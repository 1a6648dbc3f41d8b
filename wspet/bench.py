"""Benchmarks (`make bench` / `python -m wspet.bench`): where the time of training and prediction goes.

One run measures, on the machine it runs on (docs/performance.md):

- the bare training step (network, loss, clipping, optimiser) and the full Lightning step (the
  same plus loading, logging and callbacks) at the training patch size and at 96^3, and their ratio;
- both in float32 and in the precision ``auto`` resolves to (:mod:`wspet.model.precision`), and in that
  precision without the ``channels_last_3d`` layout the model switches to under bf16 on CPUs;
- the training step's GFLOP/s against a matrix product of the same precision, measured here;
- the data loader's samples per second against the rate at which the step consumes them;
- each loss of ``conf/loss`` (forward and backward) as a share of the step;
- validation time as a share of the training between two validations;
- whole-body sliding-window prediction: time and peak memory, in float32 and ``auto``;
- the CPU's ISA flags, torch's CPU capability and version.

Every time is the median of ``repeats`` runs after ``warmup`` runs; the bare and full steps
alternate in ``rounds`` rounds, and their ratio is the median of the rounds' ratios. Ratios compare figures of one
run only: the machines are shared, so absolute seconds vary from run to run. The model, loss,
optimiser and trainer are those of ``conf/train.yaml``, built by ``wspet.training.experiment``; the data is a
small phantom set written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.flop_counter import FlopCounterMode

from wspet.data.datamodule import PetDataModule, split_validation
from wspet.datasets.phantom import write_phantom_dataset
from wspet.model.precision import FP32, PrecisionChoice, denormals_flushed, device_type, read_cpu_flags, resolve_precision

CONF = Path(__file__).resolve().parents[1] / "conf"
FULL_OVER_BARE_LIMIT = 1.05  # docs/performance.md: Lightning may add at most 5% to the bare step
# The x86 flags that decide the speed of float32 and bf16 convolutions.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What one bench run measures: step cases ``(patch size, batch)``, the whole-body prediction, repeats."""

    steps: tuple[tuple[tuple[int, int, int], int], ...]
    repeats: int
    # Bare and full steps are timed in this many alternating rounds, and their ratio is the median of
    # the rounds' ratios: load that changes during a case then moves both figures of one round alike.
    rounds: int
    warmup: int
    matmul_size: int
    volume: tuple[int, int, int]
    window: tuple[int, int, int]
    overlap: tuple[int, int, int]
    prediction_repeats: int
    prediction_batch: int  # windows per forward pass
    cases: int  # phantom volumes written for the run (a fifth validate)
    phantom_shape: tuple[int, int, int]
    overrides: tuple[str, ...] = ()  # Hydra overrides of conf/train.yaml, e.g. model.net.norm=instance
    # wall: elapsed seconds. cpu: this process's CPU seconds, which other processes sharing the
    # cores do not inflate; meaningful with one thread (idle OpenMP threads spin, counting as CPU time).
    clock: str = "wall"


PREDICT = OmegaConf.load(CONF / "predict.yaml")
# The training shape of conf/data/phantom.yaml and 96^3; the whole-body STS_001 grid, predicted as
# predict.py does by default.
FULL = Settings(
    steps=(((48, 48, 48), 2), ((96, 96, 96), 1)), repeats=5, rounds=3, warmup=2, matmul_size=4096,
    volume=(128, 128, 267), window=tuple(PREDICT.window), overlap=tuple(PREDICT.overlap), prediction_repeats=3,
    prediction_batch=PREDICT.batch_size, cases=10, phantom_shape=(96, 96, 64),
)
QUICK = Settings(
    steps=(((32, 32, 32), 2), ((48, 48, 48), 1)), repeats=3, rounds=1, warmup=1, matmul_size=2048,
    volume=(64, 64, 64), window=(48, 48, 48), overlap=(16, 16, 16), prediction_repeats=1,
    prediction_batch=2, cases=6, phantom_shape=(64, 64, 48),
)


# --------------------------------------------------------------------------- timing


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(clock: str) -> float:
    """Seconds by ``clock`` (``wall`` or ``cpu``, see :class:`Settings`)."""
    return time.process_time() if clock == "cpu" else time.perf_counter()


def median_seconds(
    step: Callable[[], object], settings: Settings, device: torch.device, warmup: int | None = None, repeats: int | None = None
) -> float:
    """Median time of ``step`` over ``repeats`` calls after ``warmup`` (allocator, kernel choice); ``settings``' by default."""
    return statistics.median(sample_seconds(step, settings, device, warmup, repeats))


def sample_seconds(
    step: Callable[[], object], settings: Settings, device: torch.device, warmup: int | None = None, repeats: int | None = None
) -> list[float]:
    """Times of ``repeats`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(settings.warmup if warmup is None else warmup):
        step()
    times = []
    for _ in range(settings.repeats if repeats is None else repeats):
        synchronise(device)
        start = now(settings.clock)
        step()
        synchronise(device)
        times.append(now(settings.clock) - start)
    return times


def autocast(choice: PrecisionChoice, device: torch.device):
    dtype = choice.autocast_dtype
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


# --------------------------------------------------------------------------- configuration and data


def bench_config(
    root: Path, size: tuple, batch: int, settings: Settings, precision: str | None = None
) -> DictConfig:
    """``conf/train.yaml`` with ``settings.overrides`` on the bench's phantom set (volumes padded to at least
    ``size``), training ``size`` patches in batches of ``batch``; ``precision`` overrides the config's."""
    GlobalHydra.instance().clear()
    volume = [max(s, v) for s, v in zip(size, settings.phantom_shape)]
    overrides = [
        *settings.overrides, f"data.root={root}", "data.phantom=null", f"data.patch_size=[{','.join(map(str, size))}]",
        f"data.volume_size=[{','.join(map(str, volume))}]", f"data.batch_size={batch}", "data.samples_per_volume=4",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        if precision is not None:
            cfg.trainer.precision = precision
    return cfg


def data_module(cfg: DictConfig) -> PetDataModule:
    """``cfg``'s data module, set up (the volumes read into memory)."""
    from wspet.training.stage import build_datamodule

    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    return datamodule


def first_batch(datamodule: PetDataModule, supervision: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image, target)`` of the first training batch, ``(B, 1, D, H, W)`` float32 on ``device``."""
    batch = next(iter(datamodule.train_dataloader()))
    return batch["image"]["data"].to(device), batch[supervision]["data"].float().to(device)


def build_model(cfg: DictConfig, device: torch.device):
    from wspet.training.stage import build_datamodule, build_model as build

    return build(cfg, None, build_datamodule(cfg)).to(device)


# --------------------------------------------------------------------------- training steps


def bare_step(cfg: DictConfig, image: torch.Tensor, target: torch.Tensor, layout: bool = True) -> Callable[[], None]:
    """One optimiser step of ``cfg``'s model and loss with gradient clipping, as Lightning does it, minus Lightning.

    ``layout=False`` calls the network directly, keeping the default memory layout that the
    model's ``forward`` would switch to ``channels_last_3d``.
    """
    device = image.device
    model = build_model(cfg, device)
    network = model if layout else model.net.probabilities
    choice = resolve_precision(cfg.trainer.precision, device.type)
    optimizer = instantiate(cfg.model.optimizer, params=model.parameters())
    clip = cfg.trainer.get("gradient_clip_val")

    def step() -> None:
        with autocast(choice, device):
            probs = network(image)
        loss = model.loss_fn(image, probs, target)["loss"]  # in float32, as LesionSegmenter's
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


class StepClock(L.Callback):
    """Clock readings at the ends of training batches, and durations of validation epochs."""

    def __init__(self, device: torch.device, clock: str) -> None:
        self.device = device
        self.clock = clock
        self.batch_ends: list[float] = []
        self.validations: list[float] = []
        self._validation_start = 0.0

    def _now(self) -> float:
        synchronise(self.device)
        return now(self.clock)

    def on_train_batch_end(self, *args) -> None:
        self.batch_ends.append(self._now())

    def on_validation_epoch_start(self, *args) -> None:
        self._validation_start = self._now()

    def on_validation_epoch_end(self, *args) -> None:
        self.validations.append(self._now() - self._validation_start)


def lightning_run(cfg: DictConfig, datamodule: PetDataModule, settings: Settings, device: torch.device, validate: bool) -> StepClock:
    """``trainer.fit`` of ``cfg`` for ``warmup + repeats + 1`` steps (then one validation if ``validate``)."""
    from wspet.training.trainer import build_trainer

    steps = settings.warmup + settings.repeats + 1
    run_cfg = cfg.copy()
    with open_dict(run_cfg):
        run_cfg.trainer.update(
            max_epochs=1, max_steps=steps, limit_train_batches=steps, limit_val_batches=1.0 if validate else 0,
            val_check_interval=None, check_val_every_n_epoch=1, num_sanity_val_steps=0, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
        )
    clock = StepClock(device, settings.clock)
    model = build_model(cfg, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as folder:
        trainer = build_trainer(run_cfg, [clock], [], Path(folder))
        trainer.fit(model, datamodule=datamodule)
    return clock


def full_step_samples(clock: StepClock, warmup: int) -> list[float]:
    """Times between the ends of consecutive training batches, after ``warmup`` of them."""
    return np.diff(clock.batch_ends)[warmup:].tolist()


def bare_and_full(cfg: DictConfig, datamodule: PetDataModule, settings: Settings, device: torch.device) -> dict:
    """Median bare and full step of ``cfg`` and their ratio, timed in ``settings.rounds`` alternating rounds.

    ``full_over_bare`` is the median of the rounds' ratios, ``full_over_bare_range`` their smallest
    and largest: a shared machine's load moves both figures of one round alike.
    """
    image, target = first_batch(datamodule, cfg.loss.supervision, device)
    step = bare_step(cfg, image, target)
    bare, full, ratios = [], [], []
    for round_ in range(settings.rounds):
        bare_round = sample_seconds(step, settings, device, settings.warmup if round_ == 0 else 0)
        full_round = full_step_samples(lightning_run(cfg, datamodule, settings, device, validate=False), settings.warmup)
        ratios.append(statistics.median(full_round) / statistics.median(bare_round))
        bare += bare_round
        full += full_round
    return {
        "bare_s": statistics.median(bare), "full_s": statistics.median(full),
        "full_over_bare": statistics.median(ratios), "full_over_bare_range": [min(ratios), max(ratios)],
    }


def step_case(root: Path, size: tuple, batch: int, settings: Settings, device: torch.device, auto: PrecisionChoice) -> dict:
    """Bare and full steps of one patch size in float32 and in ``auto``, and ``auto`` without the model's layout switch."""
    case = {"size": list(size), "batch": batch}
    precisions = {"fp32": FP32} if auto.precision == FP32 else {"fp32": FP32, "auto": "auto"}
    datamodule = data_module(bench_config(root, size, batch, settings))  # the precision does not change the data
    for name, precision in precisions.items():
        case[name] = bare_and_full(bench_config(root, size, batch, settings, precision), datamodule, settings, device)
    cfg = bench_config(root, size, batch, settings, "auto")
    image, target = first_batch(datamodule, cfg.loss.supervision, device)
    case.setdefault("auto", case["fp32"])
    case["auto_speedup"] = case["fp32"]["bare_s"] / case["auto"]["bare_s"]
    step = bare_step(cfg, image, target, layout=False)
    case["auto_default_layout_bare_s"] = median_seconds(step, settings, device)
    case["layout_speedup"] = case["auto_default_layout_bare_s"] / case["auto"]["bare_s"]
    return case


# --------------------------------------------------------------------------- arithmetic ceiling


def step_gflop(cfg: DictConfig, image: torch.Tensor, target: torch.Tensor) -> float:
    """GFLOP of one forward and backward pass of the network and loss, counted by torch's FlopCounterMode."""
    device = image.device
    model = build_model(cfg, device)
    with FlopCounterMode(display=False) as counter:
        model.loss_fn(image, model(image), target)["loss"].backward()
    return counter.get_total_flops() / 1e9


def matmul_gflop_per_s(size: int, dtype: torch.dtype, settings: Settings, device: torch.device) -> float:
    """GFLOP/s of a ``size`` x ``size`` matrix product in ``dtype``: the machine's ceiling for that precision."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    seconds = median_seconds(lambda: a @ b, settings, device)
    return 2 * size**3 / seconds / 1e9


def throughput(cfg: DictConfig, cases: list[dict], image: torch.Tensor, target: torch.Tensor, settings: Settings, auto: PrecisionChoice) -> dict:
    """The first step case's GFLOP/s in float32 and ``auto`` against matrix products of the same dtypes."""
    gflop = step_gflop(cfg, image, target)
    result = {"size": cases[0]["size"], "batch": cases[0]["batch"], "step_gflop": gflop}
    for name, dtype in (("fp32", torch.float32), ("auto", auto.autocast_dtype or torch.float32)):
        network = gflop / cases[0][name]["bare_s"]
        ceiling = matmul_gflop_per_s(settings.matmul_size, dtype, settings, image.device)
        result[name] = {"step_gflop_per_s": network, "matmul_gflop_per_s": ceiling, "fraction_of_matmul": network / ceiling}
    return result


# --------------------------------------------------------------------------- loader, losses, validation


def loader_rate(datamodule: PetDataModule, settings: Settings) -> float:
    """Training samples per second the data loader delivers, over whole epochs (queue fills included)."""
    rates = []
    for _ in range(1 + settings.repeats):  # the first epoch warms up
        start = now(settings.clock)
        samples = sum(batch["image"]["data"].shape[0] for batch in datamodule.train_dataloader())
        rates.append(samples / (now(settings.clock) - start))
    return statistics.median(rates[1:])


def loss_seconds(image: torch.Tensor, target: torch.Tensor, settings: Settings) -> dict[str, float]:
    """Forward and backward time of each loss of ``conf/loss`` on one batch, sigmoid included."""
    logits = torch.randn(image.shape, device=image.device, requires_grad=True)
    seconds = {}
    for path in sorted((CONF / "loss").glob("*.yaml")):
        spec = OmegaConf.load(path)
        if not spec.get("module"):
            continue
        loss_fn = instantiate(spec.module)  # conf/loss is the project's own configuration
        # Only pseudo-labels mark voxels to ignore (2); every other loss takes a {0, 1} mask.
        mask = target if spec.get("supervision") == "pseudo" else (target == 1).to(target.dtype)

        def step() -> None:
            loss_fn(image, torch.sigmoid(logits), mask)["loss"].backward()
            logits.grad = None

        seconds[spec.get("name", path.stem)] = median_seconds(step, settings, image.device)
    return seconds


def steps_between_validations(cfg: DictConfig, cases: int) -> int:
    """Training steps from one validation to the next under ``cfg`` on a dataset of ``cases`` training cases."""
    interval = cfg.trainer.get("val_check_interval")
    if isinstance(interval, int) and not isinstance(interval, bool):
        return interval
    train, _ = split_validation(list(range(cases)), cfg.data.val_fraction, cfg.data.split_seed)
    per_epoch = math.ceil(len(train) * cfg.data.samples_per_volume / cfg.data.batch_size)
    return per_epoch * (cfg.trainer.get("check_val_every_n_epoch") or 1)


def validation_share(root: Path, settings: Settings, device: torch.device, step_s: float) -> dict:
    """Validation time per validation, as a share of that time plus the training steps between validations.

    Measured on the bench's validation volumes and scaled to the default config's number of
    validation volumes (``conf/data/phantom.yaml``); steps between validations from its trainer.
    """
    size, batch = settings.steps[0]
    cfg = bench_config(root, size, batch, settings)
    datamodule = data_module(cfg)
    clock = lightning_run(cfg, datamodule, replace(settings, warmup=0, repeats=1), device, validate=True)
    per_volume = clock.validations[-1] / len(datamodule.val_subjects)
    cases = OmegaConf.load(CONF / "data" / "phantom.yaml").phantom.n_train
    _, val_cases = split_validation(list(range(cases)), cfg.data.val_fraction, cfg.data.split_seed)
    validation_s = per_volume * len(val_cases)
    steps = steps_between_validations(cfg, cases)
    training_s = steps * step_s
    return {
        "seconds_per_volume": per_volume, "volumes": len(val_cases), "validation_s": validation_s,
        "steps_between": steps, "training_s": training_s, "share": validation_s / (validation_s + training_s),
    }


# --------------------------------------------------------------------------- whole-body prediction


def _memory_mb(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory in MB.

    Read from Linux's /proc, because ``ru_maxrss`` survives ``execve``: a spawned child would report
    its parent's peak when that was higher. Elsewhere, ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _prediction_case(queue, net: dict, loss: dict, precision: str, settings: Settings, threads: int, device: str) -> None:
    from wspet.inference.sliding_window import predict_probabilities
    from wspet.model.module import LesionSegmenter

    torch.set_flush_denormal(True)  # a process of its own, as predict.py
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = LesionSegmenter(net=net, loss=loss).to(device)
    image = np.random.default_rng(0).gamma(2.0, 0.5, size=settings.volume).astype(np.float32)
    before_mb = _memory_mb("VmRSS")  # the interpreter, torch, the model and the volume

    def step() -> None:
        predict_probabilities(model, image, np.eye(4), settings.window, settings.overlap,
                              batch_size=settings.prediction_batch, precision=precision)

    seconds = median_seconds(step, settings, torch.device(device), 1, settings.prediction_repeats)
    result = {"seconds": seconds, "peak_rss_mb": _memory_mb(), "rss_before_mb": before_mb}
    if device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    queue.put(result)


def prediction(cfg: DictConfig, precision: str, settings: Settings, threads: int, device: torch.device) -> dict:
    """Whole-body prediction in a process of its own, so that its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    loss = OmegaConf.to_container(cfg.loss.module, resolve=True)
    process = context.Process(target=_prediction_case, args=(queue, net, loss, precision, settings, threads, device.type))
    process.start()
    result = queue.get()
    process.join()
    return result


# --------------------------------------------------------------------------- the run


def machine(threads: int, auto: PrecisionChoice) -> dict:
    flags = read_cpu_flags()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_flags": " ".join(f for f in ISA_FLAGS if f in flags) or "none recognised",
        "threads": threads,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "auto_precision": auto.precision,
        "auto_reason": auto.reason,
    }


def run(settings: Settings, threads: int) -> dict:
    """Every measurement of the bench; see the module docstring."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    base = bench_config(Path("unused"), *settings.steps[0], settings)
    device = torch.device(device_type(base.trainer.accelerator))
    auto = resolve_precision("auto", device.type)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "phantom"
        write_phantom_dataset(root, n_train=settings.cases, n_test=1, seed=0, shape=settings.phantom_shape)
        cases = []
        for size, batch in settings.steps:
            cases.append(progress(f"steps {size} b{batch}", step_case, root, size, batch, settings, device, auto))
        cfg = bench_config(root, *settings.steps[0], settings)
        datamodule = data_module(cfg)
        image, target = first_batch(datamodule, cfg.loss.supervision, device)
        step_s = cases[0]["auto"]["full_s"]
        batch = cases[0]["batch"]
        samples_per_s = progress("loader", loader_rate, datamodule, settings)
        losses = progress("losses", loss_seconds, image, target, settings)
        result = {
            "machine": machine(threads, auto),
            "steps": cases,
            "throughput": progress("throughput", throughput, cfg, cases, image, target, settings, auto),
            "loader": {"samples_per_s": samples_per_s, "step_samples_per_s": batch / step_s, "loader_over_step": samples_per_s * step_s / batch},
            "losses": {name: {"seconds": s, "share_of_step": s / step_s} for name, s in losses.items()},
            "validation": progress("validation", validation_share, root, settings, device, step_s),
        }
    predictions = {"fp32": progress("prediction fp32", prediction, cfg, FP32, settings, threads, device)}
    if auto.precision == FP32:
        predictions["auto"] = predictions["fp32"]
    else:
        predictions["auto"] = progress("prediction auto", prediction, cfg, "auto", settings, threads, device)
    result["prediction"] = {
        "volume": list(settings.volume), "window": list(settings.window), **predictions,
        "auto_speedup": predictions["fp32"]["seconds"] / predictions["auto"]["seconds"],
    }
    load_after = os.getloadavg()
    result["machine"]["clock"] = settings.clock
    result["machine"]["load_average"] = f"{load_before[0]:.2f} {load_before[1]:.2f} / {load_after[0]:.2f} {load_after[1]:.2f}"
    result["checks"] = checks(result)
    return result


def progress(name: str, measure: Callable, *args):
    """``measure(*args)``, its duration reported on stderr (a bench run takes minutes)."""
    start = time.perf_counter()
    result = measure(*args)
    print(f"[bench] {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return result


def checks(result: dict) -> dict[str, bool]:
    """The targets of docs/performance.md, true where this run meets them."""
    bf16_cpu = "avx512_bf16" in result["machine"]["isa_flags"] or "amx_bf16" in result["machine"]["isa_flags"]
    worst = max(case[p]["full_over_bare"] for case in result["steps"] for p in ("fp32", "auto"))
    verdicts = {
        f"full step / bare step <= {FULL_OVER_BARE_LIMIT}": worst <= FULL_OVER_BARE_LIMIT,
        "auto not slower than fp32": all(case["auto_speedup"] >= 1 / FULL_OVER_BARE_LIMIT for case in result["steps"]),
        "auto step >= 60% of its matmul": result["throughput"]["auto"]["fraction_of_matmul"] >= 0.6,
        "validation <= 10% of training": result["validation"]["share"] <= 0.10,
        "prediction < 4 GB": max(result["prediction"][p]["peak_rss_mb"] for p in ("fp32", "auto")) < 4096,
    }
    if bf16_cpu:
        verdicts["auto step >= 2.2x fp32 (AVX512-BF16)"] = result["steps"][0]["auto_speedup"] >= 2.2
        verdicts["prediction <= 5 s (AVX512-BF16)"] = result["prediction"]["auto"]["seconds"] <= 5
    return verdicts


# Every figure of the JSON: dotted paths, ``*`` standing for each step case, each loss, each precision.
FIELDS = (
    "machine.torch", "machine.cpu_capability", "machine.isa_flags", "machine.threads", "machine.auto_precision",
    "steps.*.fp32.bare_s", "steps.*.fp32.full_s", "steps.*.fp32.full_over_bare",
    "steps.*.auto.bare_s", "steps.*.auto.full_s", "steps.*.auto.full_over_bare",
    "steps.*.fp32.full_over_bare_range.*", "steps.*.auto.full_over_bare_range.*",
    "steps.*.auto_speedup", "steps.*.auto_default_layout_bare_s", "steps.*.layout_speedup",
    "throughput.step_gflop", "throughput.*.step_gflop_per_s", "throughput.*.matmul_gflop_per_s",
    "throughput.*.fraction_of_matmul",
    "loader.samples_per_s", "loader.step_samples_per_s", "loader.loader_over_step",
    "losses.*.seconds", "losses.*.share_of_step",
    "validation.seconds_per_volume", "validation.validation_s", "validation.training_s", "validation.share",
    "prediction.fp32.seconds", "prediction.fp32.peak_rss_mb", "prediction.auto.seconds", "prediction.auto.peak_rss_mb",
    "prediction.auto_speedup",
)


def missing_or_not_positive(result: dict, fields: tuple[str, ...] = FIELDS) -> list[str]:
    """The dotted paths of ``fields`` that ``result`` lacks, or where it holds no positive number or text."""
    bad = []
    for field in fields:
        for path, value in _lookup(result, field.split("."), ""):
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value > 0 or isinstance(value, str) and value):
                bad.append(f"{path.lstrip('.')}={value!r}")
    return bad


def _lookup(node, keys: list[str], path: str):
    if not keys:
        yield path, node
        return
    key, rest = keys[0], keys[1:]
    if key == "*":
        children = list(enumerate(node)) if isinstance(node, list) else list(node.items()) if isinstance(node, dict) else []
        if not children:
            yield f"{path}.*", None
        for name, child in children:
            if isinstance(node, list) or isinstance(child, dict):
                yield from _lookup(child, rest, f"{path}.{name}")
        return
    if not isinstance(node, dict) or key not in node:
        yield f"{path}.{key}", None
        return
    yield from _lookup(node[key], rest, f"{path}.{key}")


def table(result: dict) -> str:
    """The run as a plain-text table."""
    lines = [f"torch {result['machine']['torch']}, {result['machine']['threads']} threads, {result['machine']['device']}, "
             f"ISA: {result['machine']['isa_flags']} ({result['machine']['cpu_capability']}); "
             f"auto = {result['machine']['auto_precision']} ({result['machine']['auto_reason']})"]
    lines.append(f"{'step':<16}{'fp32 bare':>10}{'fp32 full':>10}{'ratio':>7}{'auto bare':>10}{'auto full':>10}{'ratio':>7}"
                 f"{'auto/fp32':>10}{'layout':>9}")
    for case in result["steps"]:
        fp32, auto = case["fp32"], case["auto"]
        lines.append(f"{'x'.join(map(str, case['size'])) + ' b' + str(case['batch']):<16}{fp32['bare_s']:>9.3f}s{fp32['full_s']:>9.3f}s"
                     f"{fp32['full_over_bare']:>7.2f}{auto['bare_s']:>9.3f}s{auto['full_s']:>9.3f}s{auto['full_over_bare']:>7.2f}"
                     f"{case['auto_speedup']:>9.2f}x{case['layout_speedup']:>8.2f}x")
    spans = ", ".join(f"{'x'.join(map(str, case['size']))} {name} {low:.2f}-{high:.2f}"
                      for case in result["steps"] for name in ("fp32", "auto")
                      for low, high in [case[name]["full_over_bare_range"]])
    lines.append(f"full/bare, smallest to largest of the rounds: {spans}")
    flops = result["throughput"]
    for name in ("fp32", "auto"):
        lines.append(f"{name} step {flops[name]['step_gflop_per_s']:.0f} GFLOP/s = {flops[name]['fraction_of_matmul']:.0%} of a "
                     f"matmul's {flops[name]['matmul_gflop_per_s']:.0f} ({flops['step_gflop']:.1f} GFLOP per step)")
    loader = result["loader"]
    lines.append(f"loader {loader['samples_per_s']:.1f} samples/s, step consumes {loader['step_samples_per_s']:.1f} "
                 f"({loader['loader_over_step']:.1f}x)")
    lines.append("losses, share of the auto step: " + ", ".join(f"{n} {v['share_of_step']:.1%}" for n, v in result["losses"].items()))
    val = result["validation"]
    lines.append(f"validation {val['validation_s']:.1f} s per {val['steps_between']} steps ({val['training_s']:.1f} s): "
                 f"{val['share']:.1%}")
    pred = result["prediction"]
    lines.append(f"prediction {'x'.join(map(str, pred['volume']))}: " + ", ".join(
        f"{p} {pred[p]['seconds']:.2f} s, peak {pred[p]['peak_rss_mb']:.0f} MB ({pred[p]['rss_before_mb']:.0f} MB before)"
        for p in ("fp32", "auto")))
    lines.append(f"load average (1 and 5 min, before / after): {result['machine']['load_average']}")
    lines += [f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in result["checks"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wspet.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (under 2 minutes on 2 cores)")
    parser.add_argument("--repeats", type=int, help="timed runs per figure (default 5, quick 3)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)")
    parser.add_argument("--out", help="write the results as JSON to this new file")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: time by this process's CPU seconds, for a machine others share (use --threads 1)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml (model.net.norm=instance ...)")
    args = parser.parse_args(argv)
    if args.out and Path(args.out).exists():
        parser.error(f"--out {args.out}: exists; name a new file")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: needs at least 1")
    settings = QUICK if args.quick else FULL
    settings = replace(settings, repeats=args.repeats or settings.repeats, overrides=tuple(args.overrides), clock=args.clock)
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "wspet"):  # one trainer per figure: no chatter
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    start = time.perf_counter()
    with denormals_flushed():  # as train and predict
        result = run(settings, args.threads)
    result["command"] = " ".join(["python -m wspet.bench", *(argv if argv is not None else sys.argv[1:])])
    result["seconds"] = time.perf_counter() - start
    print(table(result))
    print(f"bench took {result['seconds']:.0f} s")
    for problem in missing_or_not_positive(result):
        print(f"WARNING: no positive figure for {problem}")
    if args.out:
        from wspet.io import write_text

        write_text(args.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
