"""Options every training command shares (data, model, optimization) and how to turn them into objects."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from training.data import ColumnOverrides, DataError, Dataset, split
from training.fit import OPTIMIZERS, FitConfig
from training.models import ARCHS, BN_POSITIONS, CAT_ENCODINGS
from training.pipeline import DataSettings, load
from training.schedules import SCHEDULE_NAMES

_DEFAULTS = FitConfig()


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 1,8,8, got {text!r}"
        ) from None
    if len(shape) not in (2, 3) or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"expected C,L or C,H,W with positive sizes, got {text!r}")
    return shape


def _lr(text: str) -> float | str:
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("the learning rate must be > 0")
    return value


def _param(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        if not sep or not key.isidentifier():
            raise ValueError
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KEY=NUMBER like t0=10, got {text!r}") from None


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}")
    return value


class _Explicit(argparse.Action):
    """Store the value and remember that the user gave the flag (training.defaults skips those fields)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[no-untyped-def]
        setattr(namespace, self.dest, values)
        explicit = set(getattr(namespace, "explicit", None) or ())
        explicit.add(self.dest)
        namespace.explicit = frozenset(explicit)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def add_data_args(parser: argparse.ArgumentParser, *, default_data: str | None = "digits") -> Any:
    """The data options: source, target, task and the column kinds of a table."""
    d = parser.add_argument_group("data")
    d.add_argument(
        "--data",
        default=default_data,
        required=default_data is None,
        help="'digits' (bundled) or a .csv/.parquet/.npz path",
    )
    d.add_argument("--target", help="target column of a CSV/Parquet file (comma-separated: multi-target)")
    d.add_argument(
        "--task", choices=("classification", "regression"), help="default: detected from the target"
    )
    d.add_argument(
        "--categorical",
        type=_names,
        default=(),
        metavar="C,..",
        help="table columns to treat as categories (e.g. integer codes)",
    )
    d.add_argument(
        "--numeric", type=_names, default=(), metavar="C,..", help="table columns to treat as numbers"
    )
    d.add_argument(
        "--ignore",
        type=_names,
        default=(),
        metavar="C,..",
        help="table columns to leave out (IDs, free text)",
    )
    return d


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add the data, model and optimization options (every training command takes them)."""
    parser.set_defaults(explicit=frozenset())
    d = add_data_args(parser)
    d.add_argument("--input-shape", type=_shape, help="C,L or C,H,W shape of one row (for --arch cnn)")
    d.add_argument("--val-fraction", type=_fraction, default=0.15)
    d.add_argument("--test-fraction", type=_fraction, default=0.15)
    m = parser.add_argument_group("model")
    m.add_argument("--arch", choices=ARCHS, default=_DEFAULTS.arch, action=_Explicit)
    m.add_argument(
        "--width",
        type=int,
        action=_Explicit,
        help="MLP hidden units / CNN first-stage channels (default 512 / 32)",
    )
    m.add_argument(
        "--depth", type=int, action=_Explicit, help="MLP hidden layers / CNN stages (default 2 / 2)"
    )
    m.add_argument("--dropout", type=float, default=_DEFAULTS.dropout, action=_Explicit)
    m.add_argument(
        "--min-count",
        type=int,
        default=_DEFAULTS.min_count,
        action=_Explicit,
        help="tables: categories seen fewer times in a member's training rows pool as 'rare or unseen'",
    )
    m.add_argument(
        "--cat-encoding",
        choices=CAT_ENCODINGS,
        default=_DEFAULTS.cat_encoding,
        action=_Explicit,
        help="tables: how the network sees a category (learned embedding or one-hot)",
    )
    m.add_argument(
        "--bn-position",
        choices=BN_POSITIONS,
        default=_DEFAULTS.bn_position,
        action=_Explicit,
        help="BatchNorm before or after the activation",
    )
    o = parser.add_argument_group("optimization")
    o.add_argument("--epochs", type=int, default=_DEFAULTS.epochs, action=_Explicit)
    o.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, action=_Explicit)
    o.add_argument(
        "--lr",
        type=_lr,
        default=_DEFAULTS.lr,
        action=_Explicit,
        help="peak learning rate, or 'auto' (LR range test)",
    )
    o.add_argument("--optimizer", choices=OPTIMIZERS, default=_DEFAULTS.optimizer, action=_Explicit)
    o.add_argument(
        "--weight-decay",
        type=float,
        default=_DEFAULTS.weight_decay,
        action=_Explicit,
        help="L2 penalty (adam, sgd) or decoupled weight decay (adamw)",
    )
    o.add_argument("--schedule", choices=SCHEDULE_NAMES, default=_DEFAULTS.schedule, action=_Explicit)
    o.add_argument(
        "--schedule-param",
        type=_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="schedule parameter, repeatable: step_size, gamma (step); min_lr (cosine); t0, t_mult "
        "(restarts); min_lr, step_size (cyclic); pct_start, div, final_div (onecycle); factor, patience, "
        "min_lr (plateau)",
    )
    o.add_argument(
        "--patience",
        type=int,
        default=_DEFAULTS.patience,
        action=_Explicit,
        help="early stopping patience (epochs)",
    )
    o.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    o.add_argument("--device", choices=("auto", "cpu", "cuda"), default=_DEFAULTS.device)
    o.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (1 is fastest for these small networks on a busy machine)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def data_from_args(args: argparse.Namespace) -> DataSettings:
    kinds = ColumnOverrides(tuple(args.categorical), tuple(args.numeric), tuple(args.ignore))
    return DataSettings(args.data, args.target, args.task, getattr(args, "input_shape", None), kinds)


def load_from_args(args: argparse.Namespace) -> Dataset:
    """The dataset the options name (raises DataError)."""
    return load(data_from_args(args))


def split_from_args(ds: Dataset, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/validation/test indices with the options' fractions and seed."""
    return split(ds, args.val_fraction, args.test_fraction, seed=args.seed)


def config_from_args(args: argparse.Namespace, lr: float | None = None) -> FitConfig:
    """A FitConfig from the options; `lr` replaces an `--lr auto` once it is resolved."""
    chosen = lr if lr is not None else args.lr
    if chosen == "auto":
        chosen = _DEFAULTS.lr  # callers resolve 'auto' with the LR range test; this is a placeholder
    config = FitConfig(
        arch=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=float(chosen),
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        width=args.width,
        depth=args.depth,
        bn_position=args.bn_position,
        schedule=args.schedule,
        schedule_params=dict(args.schedule_param),
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        min_count=args.min_count,
        cat_encoding=args.cat_encoding,
    )
    config.validate()
    return config


def apply_threads(args: argparse.Namespace) -> None:
    import torch

    if args.threads < 1:
        raise ValueError("--threads must be >= 1")
    torch.set_num_threads(args.threads)


__all__ = [
    "DataError",
    "add_common_args",
    "apply_threads",
    "config_from_args",
    "load_from_args",
    "split_from_args",
]
