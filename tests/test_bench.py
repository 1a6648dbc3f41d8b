"""The bench: every figure of its JSON present and positive, at tiny sizes and (slow) as `--quick --out`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wspet.bench import FIELDS, Settings, checks, main, missing_or_not_positive, run, table

# A two-level U-Net of 4 and 8 features on 16^3 patches: every code path of the bench in seconds.
TINY = Settings(
    steps=(((16, 16, 16), 2), ((16, 16, 32), 1)), repeats=1, rounds=2, warmup=1, matmul_size=128,
    volume=(32, 32, 24), window=(16, 16, 16), overlap=(4, 4, 4), prediction_repeats=1,
    prediction_batch=2, cases=5, phantom_shape=(32, 32, 32), overrides=("model.net.features=[4,8]",),
)


def test_a_tiny_run_has_every_field_positive():
    result = run(TINY, threads=1)
    assert missing_or_not_positive(result) == []
    assert [case["size"] for case in result["steps"]] == [[16, 16, 16], [16, 16, 32]]
    assert set(result["losses"]) >= {"dice", "fs", "mdice", "mdice_ms"}  # every conf/loss file
    assert all(isinstance(ok, bool) for ok in result["checks"].values())
    assert "full step / bare step <= 1.05" in table(result)
    for case in result["steps"]:
        low, high = case["fp32"]["full_over_bare_range"]
        assert low <= case["fp32"]["full_over_bare"] <= high  # the median of two rounds lies between them


def test_missing_and_non_positive_fields_are_named():
    result = {
        "machine": {"torch": "2.13", "isa_flags": ""},
        "steps": [{"fp32": {"bare_s": 0.5}}, {"fp32": {"bare_s": 0.0}}],
        "losses": {},
    }
    problems = missing_or_not_positive(result, ("machine.torch", "machine.isa_flags", "machine.threads", "steps.*.fp32.bare_s", "losses.*.seconds"))
    assert problems == ["machine.isa_flags=''", "machine.threads=None", "steps.1.fp32.bare_s=0.0", "losses.*=None"]


def test_the_field_list_covers_what_the_issue_asks_for():
    sections = {field.split(".")[0] for field in FIELDS}
    assert sections == {"machine", "steps", "throughput", "loader", "losses", "validation", "prediction"}
    assert {"steps.*.fp32.full_over_bare", "steps.*.auto_speedup", "throughput.*.fraction_of_matmul",
            "loader.loader_over_step", "losses.*.share_of_step", "validation.share", "prediction.auto.peak_rss_mb",
            "machine.isa_flags", "machine.torch"} <= set(FIELDS)


def test_checks_name_the_targets_that_fail():
    case = {"fp32": {"full_over_bare": 1.02}, "auto": {"full_over_bare": 1.2}, "auto_speedup": 2.5}
    result = {
        "machine": {"isa_flags": "avx2 avx512_bf16"}, "steps": [case],
        "throughput": {"auto": {"fraction_of_matmul": 0.4}}, "validation": {"share": 0.05},
        "prediction": {"fp32": {"peak_rss_mb": 900.0}, "auto": {"peak_rss_mb": 800.0, "seconds": 6.0}},
    }
    verdicts = checks(result)
    failed = sorted(name for name, ok in verdicts.items() if not ok)
    assert failed == ["auto step >= 60% of its matmul", "full step / bare step <= 1.05", "prediction <= 5 s (AVX512-BF16)"]


def test_an_existing_out_file_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "bench.json"
    out.write_text("{}")
    with pytest.raises(SystemExit):
        main(["--quick", "--out", str(out)])
    assert "exists" in capsys.readouterr().err and out.read_text() == "{}"


@pytest.mark.slow
def test_quick_bench_writes_every_field(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "-m", "wspet.bench", "--quick", "--out", str(out)], check=True, cwd=Path(__file__).parents[1])
    result = json.loads(out.read_text())
    assert missing_or_not_positive(result) == []
    assert result["seconds"] < 120  # the issue's budget for --quick on 2 cores
