"""``precision: auto`` resolved from faked hardware: bf16 only where the CPU or GPU computes in bf16."""

import subprocess
import sys

import pytest
import torch

from wspet.model.precision import BF16, FP32, device_type, read_cpu_flags, resolve_precision

SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
AVX2_ONLY = "fpu sse2 avx avx2 fma"


def cpu(flags: str, capability: str = "AVX512", precision: str = "auto"):
    return resolve_precision(precision, "cpu", cpu_flags=lambda: flags.split(), cpu_capability=lambda: capability)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (SAPPHIRE_RAPIDS, BF16),
        ("fpu avx2 avx512f avx512_bf16", BF16),  # Cooper Lake, Zen 4: AVX512-BF16 without AMX
        ("fpu avx2 amx_bf16 amx_tile", BF16),
        (AVX2_ONLY, FP32),
        ("fpu avx2 avx512f avx512_vnni", FP32),  # AVX512 without bf16 (Skylake, Cascade Lake)
        ("", FP32),  # an unrecognised CPU
    ],
)
def test_auto_on_a_cpu_follows_its_bf16_flags(flags, expected):
    choice = cpu(flags)
    assert choice.precision == expected
    assert (choice.autocast_dtype == torch.bfloat16) == (expected == BF16)


def test_auto_gives_float32_when_torch_does_not_dispatch_avx512_kernels():
    choice = cpu(SAPPHIRE_RAPIDS, capability="AVX2")  # e.g. ATEN_CPU_CAPABILITY=avx2
    assert choice.precision == FP32 and "AVX2" in choice.reason


def test_a_configured_precision_is_kept():
    assert cpu(AVX2_ONLY, precision="bf16-mixed").precision == "bf16-mixed"
    assert cpu(SAPPHIRE_RAPIDS, precision="32-true").precision == FP32
    assert resolve_precision(32, "cpu", cpu_flags=lambda: []).precision == "32"


@pytest.mark.parametrize("supported, expected", [(True, BF16), (False, FP32)])
def test_auto_on_a_gpu_follows_its_bf16_support(supported, expected):
    choice = resolve_precision("auto", "cuda", cpu_flags=lambda: [], cuda_bf16=lambda: supported)
    assert choice.precision == expected


def test_auto_on_another_device_is_float32():
    assert resolve_precision("auto", "mps", cpu_flags=lambda: SAPPHIRE_RAPIDS.split()).precision == FP32


def test_cpu_flags_are_read_from_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\n")
    assert read_cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert read_cpu_flags(tmp_path / "arm") == frozenset()  # not an x86 flags line: unrecognised, float32


def test_accelerator_names_map_to_device_types():
    assert device_type("cpu") == "cpu"
    assert device_type("gpu") == device_type("CUDA") == "cuda"
    assert device_type("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("flags, expected", [(SAPPHIRE_RAPIDS, BF16), (AVX2_ONLY, FP32)])
def test_the_trainer_gets_the_resolved_precision(flags, expected, train_config, tmp_path, monkeypatch):
    import functools

    import wspet.training.trainer
    from wspet.model.precision import resolve_precision as real

    faked = functools.partial(real, cpu_flags=lambda: flags.split(), cpu_capability=lambda: "AVX512")
    monkeypatch.setattr(wspet.training.trainer, "resolve_precision", faked)
    cfg = train_config(tmp_path)
    assert cfg.trainer.precision == "auto"  # the default
    trainer = wspet.training.trainer.build_trainer(cfg, callbacks=[], loggers=[], stage_dir=tmp_path)
    assert trainer.precision == expected


def test_probabilities_and_losses_stay_float32_under_bf16_autocast():
    from wspet.losses import CompositeLoss
    from wspet.model.module import LesionSegmenter

    torch.manual_seed(0)
    model = LesionSegmenter(net={"features": [4, 8]}, loss={"_target_": "wspet.losses.DiceLoss"})
    image = torch.randn(2, 1, 16, 16, 16)
    box = torch.zeros_like(image)
    box[..., 4:12, 4:12, 4:12] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.net(image)
        probs = model(image)
        terms = CompositeLoss()(image, probs, box)
    assert logits.dtype == torch.bfloat16  # the convolutions do run in bf16
    assert probs.dtype == torch.float32 and all(value.dtype == torch.float32 for value in terms.values())


def test_bf16_autocast_on_a_cpu_switches_the_network_to_channels_last():
    from wspet.model.module import LesionSegmenter

    torch.manual_seed(0)
    model = LesionSegmenter(net={"features": [4, 8]}, loss={"_target_": "wspet.losses.DiceLoss"})
    optimised = list(model.parameters())
    image = torch.randn(1, 1, 16, 16, 16)
    expected = model(image)
    weight = model.net.encoders[1][0].weight  # 4 input channels: the layouts differ
    assert not weight.is_contiguous(memory_format=torch.channels_last_3d)  # float32 leaves the layout alone
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = model(image)
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()
    assert all(a is b for a, b in zip(optimised, model.parameters()))  # the same tensors: an optimiser keeps them
    assert (probs - expected).abs().max() < 2e-2


@pytest.mark.parametrize("flags, expected", [(SAPPHIRE_RAPIDS, BF16), (AVX2_ONLY, FP32)])
def test_the_run_summary_records_the_resolved_precision(flags, expected, train_config, tmp_path, monkeypatch):
    import functools

    import wspet.training.experiment
    from wspet.model.precision import resolve_precision as real
    from wspet.training.stage_result import StageResult

    faked = functools.partial(real, cpu_flags=lambda: flags.split(), cpu_capability=lambda: "AVX512")
    monkeypatch.setattr(wspet.training.experiment, "resolve_precision", faked)
    monkeypatch.setattr(wspet.training.experiment, "best_validation_metric", lambda cfg, stage: {})  # no checkpoint to read
    stage = StageResult(name="dice", checkpoint=tmp_path / "checkpoints" / "best.ckpt", collapsed=False)
    assert wspet.training.experiment.run_summary(train_config(tmp_path), [stage])["precision"] == expected


DENORMALS_IN_TWO_THREADS = """
import contextlib, sys, torch
from wspet.model.precision import denormals_flushed
with denormals_flushed() if sys.argv[1] == "flush" else contextlib.nullcontext(True) as supported:
    if not supported:
        print("unsupported"); raise SystemExit
    torch.set_num_threads(2)
    tiny = torch.full((1_000_000,), 1e-40)  # a denormal float32
    print(int(torch.count_nonzero(tiny * 1.0)))  # elementwise over 2 threads
"""


@pytest.mark.parametrize("mode, nonzero", [("flush", 0), ("keep", 1_000_000)])
def test_denormals_are_flushed_in_every_thread_when_set_first(mode, nonzero):
    result = subprocess.run([sys.executable, "-c", DENORMALS_IN_TWO_THREADS, mode], capture_output=True, text=True, check=True)
    if result.stdout.strip() == "unsupported":
        pytest.skip("this CPU has no flush-to-zero mode")
    assert int(result.stdout) == nonzero


def test_denormals_are_flushed_inside_the_block_and_restored_after():
    from wspet.model.precision import denormals_are_flushed, denormals_flushed

    before = denormals_are_flushed()
    with denormals_flushed() as supported:
        if not supported:
            pytest.skip("this CPU has no flush-to-zero mode")
        assert float(torch.tensor([1e-40]) * 1.0) == 0.0
    assert denormals_are_flushed() == before  # Python's and hypothesis's floats need denormals back


def test_train_and_predict_run_with_denormals_flushed(monkeypatch, tmp_path):
    import contextlib

    import wspet.inference.predict as predicting
    import wspet.training.experiment as training
    from omegaconf import OmegaConf

    calls = []

    def recorder(name):
        @contextlib.contextmanager
        def flushed():
            calls.append(name)
            yield True
        return flushed

    for module in (predicting, training):
        monkeypatch.setattr(module, "denormals_flushed", recorder(module.__name__))
    with pytest.raises(FileNotFoundError):  # stops right after: no such checkpoint to resume
        training.train(OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "ckpt_path": str(tmp_path / "none.ckpt")}))
    with pytest.raises((ValueError, OSError)):  # no such input
        predicting.predict(OmegaConf.create({"output": str(tmp_path / "out"), "input": str(tmp_path / "none.nii.gz"),
                                             "split": "test", "overwrite": False, "lesions_csv": True, "mip_png": True,
                                             "save_suv": False}))
    assert calls == [training.__name__, predicting.__name__]
