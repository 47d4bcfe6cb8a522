import numpy as np
import pytest
import torch

from training.lr_finder import minimum_div10, range_test, steepest, valley

LRS = list(np.logspace(-7, 1, 81))  # 10 points per decade


def _curve() -> list[float]:
    """Flat until 1e-5, falls steepest near 1e-3, minimum at 1e-1, then explodes."""
    log_lr = np.log10(LRS)
    loss = 2.0 - 1.5 / (1 + np.exp(-(log_lr + 3) * 3))  # sigmoid drop centred at 1e-3
    loss = loss + np.where(log_lr > -1, 10 * (log_lr + 1) ** 2, 0)
    return list(loss)


def test_steepest_finds_the_fastest_fall() -> None:
    assert steepest(LRS, _curve()) == pytest.approx(1e-3, rel=0.3)


def test_minimum_div10_is_a_tenth_of_the_minimum() -> None:
    losses = _curve()
    assert minimum_div10(LRS, losses) == pytest.approx(LRS[int(np.argmin(losses))] / 10)
    assert 1e-3 <= minimum_div10(LRS, losses) <= 2e-2


def test_valley_on_a_hand_worked_curve() -> None:
    # Longest decreasing run ends at index 7 with length 6, so start = 1, sections = 2, index 1 + 2 + 1.
    losses = [3, 3, 3, 2.5, 2, 1.5, 1, 0.5, 2, 5]
    lrs = [10.0**i for i in range(10)]
    assert valley(lrs, losses) == 1e4


def test_valley_lies_inside_the_falling_stretch_before_the_minimum() -> None:
    losses = _curve()
    lr = valley(LRS, losses)
    assert LRS[0] < lr < LRS[int(np.argmin(losses))]


def test_rules_share_one_signature_and_handle_tiny_inputs() -> None:
    for rule in (valley, steepest, minimum_div10):
        assert rule([1e-3, 1e-2], [1.0, 0.5]) > 0


def test_range_test_stops_on_divergence_and_restores_state() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = opt.state_dict()
    lrs, smooth, _raw, val_steps, val_metric = range_test(
        model,
        opt,
        lambda: (x, y),
        torch.nn.functional.mse_loss,
        start_lr=1e-5,
        end_lr=1e6,
        num_steps=100,
        validate=lambda: 0.5,
        val_every=10,
    )
    assert len(lrs) < 100  # 1e6 diverges long before the end
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-5)
    assert smooth[-1] > 4 * min(smooth[:-1])
    assert val_steps[0] == 0 and len(val_steps) == len(val_metric)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert opt.state_dict()["state"] == opt_before["state"] == {}
    assert opt.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("training", [False, True])
def test_range_test_restores_the_train_or_eval_mode(training: bool) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    model.train(training)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    range_test(model, opt, lambda: (x, y), torch.nn.functional.mse_loss, num_steps=5, validate=lambda: 0.0)
    assert all(m.training == training for m in model.modules())
