"""``precision: auto``: bf16 mixed precision where the hardware computes in bf16, float32 elsewhere.

On x86 CPUs with AVX512-BF16 or AMX, bf16 autocast made the U-Net's training step about 2.5x
faster than float32 (docs/performance.md); on AVX2-only CPUs, which emulate bf16, it made it
about 60x slower. So ``auto`` picks ``bf16-mixed`` only for a CPU whose flags name bf16
instructions and for a CUDA GPU that reports bf16 support; any other or unrecognised device gets
``32-true``. Training (``wspet.training.experiment.build_trainer``) and prediction (``wspet.inference.sliding_window``)
resolve it with the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

AUTO = "auto"
BF16 = "bf16-mixed"
FP32 = "32-true"
# Either flag means native bf16 dot products: AVX512-BF16 (Cooper Lake, Zen 4 and later) or AMX tiles (Sapphire Rapids and later).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")
# Lightning precision names whose forward pass autocasts, and to what.
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "16-mixed": torch.float16, "16": torch.float16}


@dataclass(frozen=True)
class PrecisionChoice:
    """A Lightning precision name and why it was chosen (logged, and kept in the run's summary)."""

    precision: str
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype the forward pass autocasts to, or None for float32 throughout."""
        return AUTOCAST_DTYPES.get(self.precision)


def read_cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU feature flags of the first ``flags`` line of ``cpuinfo``; empty when it is unreadable or has none."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:  # not Linux, or /proc not mounted: an unrecognised CPU
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def device_type(accelerator: str) -> str:
    """The torch device type a Lightning ``accelerator`` setting trains on: ``cuda``, ``cpu`` or another."""
    accelerator = str(accelerator).lower()
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator in ("gpu", "cuda") else accelerator


def resolve_precision(
    precision: str | int,
    device: str,
    *,
    cpu_flags: Callable[[], Iterable[str]] = read_cpu_flags,
    cpu_capability: Callable[[], str] = torch.backends.cpu.get_cpu_capability,
    cuda_bf16: Callable[[], bool] = torch.cuda.is_bf16_supported,
) -> PrecisionChoice:
    """The precision to use on ``device`` (a torch device type) for the configured ``precision``.

    Anything but ``auto`` is kept as configured. ``auto`` is ``bf16-mixed`` on a CUDA GPU with
    bf16 support and on a CPU whose flags include ``avx512_bf16`` or ``amx_bf16`` while torch
    dispatches AVX512 kernels (``ATEN_CPU_CAPABILITY`` can lower that); ``32-true`` otherwise.
    The three hardware probes are arguments so that tests can fake them.
    """
    if str(precision) != AUTO:
        return PrecisionChoice(str(precision), "set in the config")
    if device == "cuda":
        if cuda_bf16():
            return PrecisionChoice(BF16, "the CUDA GPU supports bf16")
        return PrecisionChoice(FP32, "the CUDA GPU does not support bf16")
    if device != "cpu":
        return PrecisionChoice(FP32, f"no bf16 rule for device type {device!r}")
    found = sorted(BF16_CPU_FLAGS.intersection(cpu_flags()))
    if not found:
        return PrecisionChoice(FP32, "the CPU flags name neither avx512_bf16 nor amx_bf16 (bf16 would be emulated, far slower)")
    capability = cpu_capability()
    if "AVX512" not in capability.upper():
        return PrecisionChoice(FP32, f"the CPU has {', '.join(found)} but torch dispatches {capability} kernels")
    return PrecisionChoice(BF16, f"the CPU flags include {', '.join(found)}")


def denormals_are_flushed() -> bool:
    """Whether this thread's CPU mode flushes denormal floats to zero (a 1-element op: no worker thread runs)."""
    return bool(torch.tensor([1e-40]).mul(1.0).eq(0).item())


@contextmanager
def denormals_flushed() -> Iterator[bool]:
    """Within the block, this CPU treats denormal floats (below 1.2e-38) as zero; yields whether supported.

    A trained SELU U-Net's float32 activations fall into the denormal range, which CPUs compute
    in microcode: its float32 step at 48^3 took 14.85 s instead of 1.59 s on one thread, and a
    float32 training run slowed from 1 to 0.2 steps per second as it learnt (docs/performance.md).
    float32 is ``auto``'s choice on AVX2-only CPUs, and prediction's there too. A float32 run
    with it scored the test Dice of a bf16 run (0.761 against 0.762). The mode is per thread and
    OpenMP's threads copy it when they are created, so enter this before torch's first parallel
    operation (``train`` and ``predict`` run inside it). On leaving, the calling thread gets its
    former mode back (Python's own floats, e.g. hypothesis, need denormals); worker threads created
    inside keep flushing.
    """
    before = denormals_are_flushed()
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(before)
