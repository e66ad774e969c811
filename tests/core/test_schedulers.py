"""Learning-rate schedules: the lr a user sees at each step, validation, exact resume."""

import warnings

import pytest
import torch

from comfyui_lora_lab.training.schedulers import SCHEDULERS, build_scheduler


def _optimizer(*lrs):
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def _lrs(name, total_steps, warmup_steps=0, num_cycles=1, base_lr=1.0):
    """The first group's lr before each of the total_steps optimizer steps."""
    optimizer = _optimizer(base_lr)
    scheduler = build_scheduler(name, optimizer, total_steps, warmup_steps, num_cycles)
    lrs = []
    for _ in range(total_steps + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_names_are_what_the_ui_offers():
    assert SCHEDULERS == ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts")


def test_warmup_ramps_linearly_from_zero_then_holds():
    assert _lrs("constant_with_warmup", 10, warmup_steps=4, base_lr=2.0) == pytest.approx(
        [0.0, 0.5, 1.0, 1.5] + [2.0] * 7)


def test_constant_ignores_warmup_and_says_so():
    with pytest.warns(UserWarning, match="constant_with_warmup"):
        assert _lrs("constant", 5, warmup_steps=2) == [1.0] * 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _lrs("constant", 5) == [1.0] * 6


def test_linear_warms_up_then_decays_to_zero_at_the_end():
    lrs = _lrs("linear", 10, warmup_steps=2)
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[6] == pytest.approx(0.5)  # 4 of 8 decay steps done
    assert lrs[10] == pytest.approx(0.0)


def test_cosine_is_half_way_at_the_midpoint_and_zero_at_the_end():
    lrs = _lrs("cosine", 12, warmup_steps=2)
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[7] == pytest.approx(0.5)  # 5 of 10 decay steps done
    assert lrs[4] == pytest.approx(0.5 * (1 + 0.8090169943749475))  # cos(pi/5)
    assert lrs[12] == pytest.approx(0.0, abs=1e-12)


def test_cosine_with_restarts_jumps_back_to_the_peak_each_cycle():
    lrs = _lrs("cosine_with_restarts", 12, num_cycles=3)  # cycles of 4 steps
    assert [lrs[i] for i in (0, 4, 8)] == pytest.approx([1.0, 1.0, 1.0])
    assert [lrs[i] for i in (2, 6, 10)] == pytest.approx([0.5, 0.5, 0.5])
    assert lrs[3] == pytest.approx(0.5 * (1 + (-0.7071067811865476)))  # cos(3pi/4), just before a restart
    assert lrs[12] == 0.0
    assert _lrs("cosine_with_restarts", 12, num_cycles=1) == pytest.approx(_lrs("cosine", 12))


def test_every_param_group_keeps_its_own_lr_scaled_by_the_schedule():
    optimizer = _optimizer(1e-4, 5e-5)
    scheduler = build_scheduler("linear", optimizer, total_steps=4, warmup_steps=2)
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5e-4, 2.5e-5])


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="step"), "'step'.*constant, constant_with_warmup, linear, cosine, cosine_with_restarts"),
    (dict(total_steps=0), "total_steps must be at least 1"),
    (dict(warmup_steps=10), "warmup_steps"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(num_cycles=0), "num_cycles must be at least 1"),
])
def test_bad_settings_are_refused(kwargs, message):
    settings = dict(name="cosine", total_steps=10, warmup_steps=0, num_cycles=1) | kwargs
    with pytest.raises(ValueError, match=message):
        build_scheduler(optimizer=_optimizer(1.0), **settings)


def test_warmup_may_be_one_less_than_total():
    assert _lrs("linear", 3, warmup_steps=2)[:3] == pytest.approx([0.0, 0.5, 1.0])


@pytest.mark.parametrize("name", SCHEDULERS)
def test_a_rebuilt_scheduler_resumes_with_the_same_lrs(name):
    settings = dict(total_steps=20, warmup_steps=3, num_cycles=2)

    def run(optimizer, scheduler, steps):
        lrs = []
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
            lrs.append([g["lr"] for g in optimizer.param_groups])
        return lrs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant with warmup warns; tested above
        optimizer = _optimizer(1e-4, 3e-5)
        scheduler = build_scheduler(name, optimizer, **settings)
        run(optimizer, scheduler, 7)
        saved_optimizer, saved_scheduler = optimizer.state_dict(), scheduler.state_dict()
        expected = run(optimizer, scheduler, 13)

        resumed_optimizer = _optimizer(1e-4, 3e-5)
        resumed = build_scheduler(name, resumed_optimizer, **settings)
    resumed_optimizer.load_state_dict(saved_optimizer)
    resumed.load_state_dict(saved_scheduler)
    assert run(resumed_optimizer, resumed, 13) == expected
