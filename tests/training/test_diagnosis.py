import math

from training.diagnosis import diagnose


def _history(train: list[float], val: list[float]) -> list[dict[str, float]]:
    return [
        {"epoch": i + 1, "train_loss": t, "val_loss": v}
        for i, (t, v) in enumerate(zip(train, val, strict=True))
    ]


def test_overfitting_when_val_rises_after_its_minimum_while_train_falls() -> None:
    train = [2.0 * 0.8**i for i in range(30)]
    val = [2.0 * 0.8**i for i in range(10)] + [0.2 + 0.02 * i for i in range(20)]
    d = diagnose(_history(train, val), baseline_loss=math.log(10))
    assert d.verdict == "overfitting"
    assert "epoch 11" in d.reasons[0]  # val = 0.2 at index 10
    assert any("dropout" in a for a in d.advice)


def test_underfitting_when_losses_barely_fall() -> None:
    train = [2.3 - 0.01 * i for i in range(30)]
    val = [2.31 - 0.01 * i for i in range(30)]
    d = diagnose(_history(train, val), baseline_loss=math.log(10))
    assert d.verdict == "underfitting"
    assert any("epochs" in a for a in d.advice)


def test_underfitting_when_train_loss_stays_high_against_chance() -> None:
    # Fell a lot relative to a terrible start, but still far from fitting 10 classes.
    train = [20.0] + [1.5 - 0.001 * i for i in range(20)]
    val = [20.0] + [1.6 - 0.001 * i for i in range(20)]
    d = diagnose(_history(train, val), baseline_loss=math.log(10))
    assert d.verdict == "underfitting"
    assert "chance-level" in " ".join(d.reasons)


def test_underfitting_when_both_losses_are_still_falling_at_the_end() -> None:
    train = [1.0 * 0.9**i for i in range(20)]
    val = [1.1 * 0.9**i for i in range(20)]
    assert diagnose(_history(train, val)).verdict == "underfitting"


def test_good_fit_when_val_flattens_near_its_minimum() -> None:
    train = [2.0, 0.8, 0.3, 0.15, 0.1, 0.08, 0.07, 0.065, 0.062, 0.06]
    val = [2.0, 0.9, 0.4, 0.22, 0.17, 0.15, 0.14, 0.141, 0.139, 0.14]
    d = diagnose(_history(train, val), baseline_loss=math.log(10))
    assert d.verdict == "good fit", d.reasons


def test_small_val_wobble_is_not_overfitting() -> None:
    train = [2.0, 0.5, 0.2, 0.1, 0.09, 0.085, 0.08, 0.078]
    val = [2.0, 0.6, 0.3, 0.2, 0.19, 0.195, 0.198, 0.2]  # +5%: within the margin
    assert diagnose(_history(train, val), baseline_loss=math.log(10)).verdict == "good fit"


def test_too_short_history_is_underfitting() -> None:
    assert diagnose(_history([1.0, 0.9], [1.0, 0.95])).verdict == "underfitting"
