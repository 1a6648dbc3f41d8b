"""Learning-rate schedules by step: warm-up, then constant, poly or cosine over the step budget."""

import pytest
import torch

from wspet.model.lr_schedule import lr_schedule


def learning_rates(name, total, warmup, **kwargs):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = lr_schedule(optimizer, name, total, warmup, **kwargs)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_warmup_rises_linearly_from_one_percent_then_poly_decays_to_zero():
    rates = learning_rates("poly", total=110, warmup=10, power=1.0)
    assert rates[0] == pytest.approx(0.01)
    assert rates[5] == pytest.approx(0.01 + 0.99 * 5 / 10)
    assert rates[10] == pytest.approx(1.0)
    assert rates[60] == pytest.approx(0.5)  # half-way through the 100 decay steps, power 1
    assert rates[-1] == pytest.approx(0.01) and all(a >= b for a, b in zip(rates[10:], rates[11:]))


def test_cosine_reaches_half_at_mid_decay_and_constant_stays():
    cosine = learning_rates("cosine", total=100, warmup=0)
    assert cosine[0] == pytest.approx(1.0) and cosine[50] == pytest.approx(0.5)
    assert learning_rates("constant", total=20, warmup=0) == [1.0] * 20


def test_a_short_run_warms_up_for_at_most_half_its_steps():
    rates = learning_rates("constant", total=4, warmup=100)
    assert rates[0] == pytest.approx(0.01) and rates[2:] == [1.0, 1.0]


@pytest.mark.parametrize("args, message", [(("step", 10, 0), "'step'"), (("poly", 0, 0), "positive step budget"), (("poly", 10, -1), ">= 0")])
def test_bad_settings_are_refused(args, message):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=message):
        lr_schedule(optimizer, *args)
