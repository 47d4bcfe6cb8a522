import math
import re
from pathlib import Path

import pytest
import torch

from training.cli import main
from training.fit import FitConfig
from training.schedules import (
    LRSchedule,
    Plateau,
    constant,
    cosine,
    cyclic,
    onecycle,
    restarts,
    step,
)


def test_constant() -> None:
    assert constant(0, 0.1, 10) == constant(7.5, 0.1, 10) == 0.1


def test_step_multiplies_by_gamma_every_step_size_epochs() -> None:
    assert step(0, 1.0, 30, step_size=10, gamma=0.5) == 1.0
    assert step(9.99, 1.0, 30, step_size=10, gamma=0.5) == 1.0
    assert step(10, 1.0, 30, step_size=10, gamma=0.5) == 0.5
    assert step(25, 1.0, 30, step_size=10, gamma=0.5) == 0.25


def test_cosine_ends_and_middle() -> None:
    assert cosine(0, 1.0, 10) == pytest.approx(1.0)
    assert cosine(5, 1.0, 10) == pytest.approx(0.5)
    assert cosine(10, 1.0, 10, min_lr=0.1) == pytest.approx(0.1)


def test_restarts_start_again_after_t0_then_t0_times_t_mult() -> None:
    assert restarts(0, 1.0, 100, t0=10, t_mult=2) == pytest.approx(1.0)
    assert restarts(5, 1.0, 100, t0=10, t_mult=2) == pytest.approx(0.5)
    assert restarts(9.999, 1.0, 100, t0=10, t_mult=2) < 1e-6
    assert restarts(10, 1.0, 100, t0=10, t_mult=2) == pytest.approx(1.0)  # restart
    assert restarts(20, 1.0, 100, t0=10, t_mult=2) == pytest.approx(0.5)  # middle of the 20-epoch cycle
    assert restarts(30, 1.0, 100, t0=10, t_mult=2) == pytest.approx(1.0)


def test_cyclic_is_triangular() -> None:
    kw = {"min_lr": 0.1, "step_size": 2}
    assert cyclic(0, 1.0, 10, **kw) == pytest.approx(0.1)
    assert cyclic(1, 1.0, 10, **kw) == pytest.approx(0.55)
    assert cyclic(2, 1.0, 10, **kw) == pytest.approx(1.0)
    assert cyclic(3, 1.0, 10, **kw) == pytest.approx(0.55)
    assert cyclic(4, 1.0, 10, **kw) == pytest.approx(0.1)


def test_onecycle_warms_up_then_anneals() -> None:
    kw = {"pct_start": 0.25, "div": 25, "final_div": 1e4}
    assert onecycle(0, 1.0, 20, **kw) == pytest.approx(1 / 25)
    assert onecycle(2.5, 1.0, 20, **kw) == pytest.approx((1 / 25 + 1) / 2)
    assert onecycle(5, 1.0, 20, **kw) == pytest.approx(1.0)
    assert onecycle(20, 1.0, 20, **kw) == pytest.approx(1e-4)
    values = [onecycle(t, 1.0, 20, **kw) for t in range(5, 21)]
    assert values == sorted(values, reverse=True)


def test_plateau_reduces_after_patience_and_respects_min_lr() -> None:
    p = Plateau(1.0, factor=0.1, patience=2, min_lr=0.05)
    assert [p.update(v) for v in (1.0, 0.9, 0.9, 0.9)] == [1.0, 1.0, 1.0, 1.0]
    assert p.update(0.9) == pytest.approx(0.1)  # third epoch without improvement
    for _ in range(3):
        p.update(0.9)
    assert p.lr == pytest.approx(0.05)


def test_lr_schedule_sets_param_groups_and_leaves_adam_betas_alone() -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0, betas=(0.9, 0.99))
    sched = LRSchedule(opt, "onecycle", 1.0, 20, {})
    for t in (0.0, 5.0, 12.5, 20.0):
        lr = sched.at_step(t)
        assert opt.param_groups[0]["lr"] == lr == onecycle(t, 1.0, 20)
        assert opt.param_groups[0]["betas"] == (0.9, 0.99)  # no momentum cycling


def test_lr_schedule_plateau_and_bad_names() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LRSchedule(opt, "plateau", 1.0, 10, {"patience": 0})
    sched.end_epoch(1.0)
    sched.end_epoch(2.0)
    assert math.isclose(sched.at_step(2.0), 0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule(opt, "sawtooth", 1.0, 10, {})
    with pytest.raises(ValueError, match="bad parameter for schedule 'cosine'"):
        LRSchedule(opt, "cosine", 1.0, 10, {"gamma": 2})


@pytest.mark.parametrize(
    ("schedule", "params", "message"),
    [
        ("restarts", {"t0": 0}, "t0=0 is invalid: it must be a finite number > 0"),
        ("restarts", {"t0": 2, "t_mult": 0.5}, "t_mult=0.5 is invalid: it must be a finite number >= 1"),
        ("step", {"step_size": 0}, "step_size=0 is invalid"),
        ("cyclic", {"step_size": 0}, "step_size=0 is invalid"),
        ("onecycle", {"div": 0}, "div=0 is invalid"),
        ("step", {"gamma": -1}, "gamma=-1 is invalid"),
        ("cosine", {"min_lr": math.nan}, "min_lr=nan is invalid"),
        ("plateau", {"patience": 1.5}, "patience=1.5 is invalid: it must be an integer >= 0"),
        ("onecycle", {"t0": 3}, "bad parameter for schedule 'onecycle': 't0' is unknown"),
    ],
)
def test_bad_schedule_params_are_one_line_errors(schedule: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        FitConfig(schedule=schedule, schedule_params=params).validate()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=re.escape(message)):
        LRSchedule(opt, schedule, 1.0, 10, params)


def test_restarts_loop_is_bounded_even_without_validation() -> None:
    assert math.isfinite(restarts(5.0, 1.0, 10, t0=2, t_mult=0.5))


def test_cli_bad_schedule_param_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["fit", "--data", "digits", "--epochs", "1", "--quiet", "--out", str(tmp_path)]
    assert main([*argv, "--schedule", "restarts", "--schedule-param", "t0=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: schedule 'restarts' parameter t0=0.0 is invalid") and "\n" not in err
