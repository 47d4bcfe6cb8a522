"""Train an ensemble on cross-validation folds, export every member, score it as the server will, and
write one repository version.

- A test set is held out first; the rest is cut into K folds. Member i trains on the other K-1 folds and
  early-stops on fold i, so each member sees different data and every row of the rest validates one member.
- Each member's graph bakes in the mean/std of *its own* training rows. The manifest's ``preprocessing``
  records one pair: the mean/std of the whole non-test part (the union of the members' training rows),
  which differs from each member's own by the sampling noise of one fold.
- Test metrics come from the exported ONNX files run by onnxruntime and averaged by
  `training.ensemble_predict`, i.e. exactly what the server computes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from server.manifest import MEMBER_OUTPUT, NAME_RE, tensor_names
from training.data import Dataset, kfold, split, standardization
from training.diagnosis import Diagnosis, diagnose
from training.ensemble_predict import classification_metrics, ensemble_metrics, regression_metrics
from training.export import export_member, export_table_member, table_feed
from training.fit import FitConfig, baseline_loss, fit, metric_name
from training.preprocess import table_record
from training.repository import MemberArtifact, TableRecord, write_version

ARCH_CHOICES = ("auto", "mlp", "cnn", "mixed")
# Defaults of `ensemble` (measured in docs/training.md): 5 CNN members of 25 epochs at 16 first-stage
# channels train in well under 2 minutes on 2 cores and the ensemble reaches >= 99% on digits.
ENSEMBLE_EPOCHS = 25
ENSEMBLE_CNN_WIDTH = 16


def resolve_arch(arch: str, ds: Dataset) -> str:
    """`auto`: the CNN where rows have an image/sequence shape, the MLP otherwise."""
    if arch == "auto":
        return "cnn" if ds.feature_shape is not None else "mlp"
    return arch


@dataclass
class EnsembleSettings:
    members: int
    base: FitConfig
    arch: str = "mlp"  # mlp | cnn | mixed (alternating, MLP first); resolve `auto` with resolve_arch
    seeds: Sequence[int] | None = None  # one per member; default base.seed + i
    test_fraction: float = 0.15
    progress: bool = False

    def validate(self, ds: Dataset | None = None) -> None:
        if self.members < 2:
            raise ValueError("--members must be >= 2 (each member validates on its own fold)")
        if self.arch not in ARCH_CHOICES or self.arch == "auto":
            raise ValueError(f"unknown arch {self.arch!r}: use one of {', '.join(ARCH_CHOICES)}")
        if self.seeds is not None and len(self.seeds) != self.members:
            raise ValueError(f"--seeds gives {len(self.seeds)} seeds for {self.members} members")
        if ds is not None and self.arch in ("cnn", "mixed") and ds.feature_shape is None:
            raise ValueError(
                f"--arch {self.arch} needs image-shaped inputs: an NPZ with N x C x H x W, or --input-shape"
            )

    def member_arch(self, i: int) -> str:
        if self.arch == "mixed":
            return "mlp" if i % 2 == 0 else "cnn"
        return self.arch

    def member_seed(self, i: int) -> int:
        return int(self.seeds[i]) if self.seeds is not None else self.base.seed + i


@dataclass
class TrainedMember:
    index: int
    config: FitConfig
    history: list[dict[str, float]]
    best_epoch: int
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    diagnosis: Diagnosis
    seconds: float
    onnx_path: Path


@dataclass
class EnsembleOutcome:
    members: list[TrainedMember]
    ensemble_metrics: dict[str, float]
    mean_member_metrics: dict[str, float]
    metric: str  # accuracy | rmse
    test_rows: int
    seconds: float
    rest_mean: np.ndarray  # standardization of the whole non-test part (recorded in the manifest)
    rest_std: np.ndarray
    table: TableRecord | None = None  # a table model's column inputs and preprocessing record


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use 1 to 64 characters from lowercase a-z, 0-9, '_' and '-'"
        )


def member_config(settings: EnsembleSettings, i: int) -> FitConfig:
    arch = settings.member_arch(i)
    config = replace(settings.base, arch=arch, seed=settings.member_seed(i))
    if arch != settings.base.arch:
        # Searched/declared width and depth belong to the base arch; the other arch keeps its defaults.
        config = replace(config, width=None, depth=None)
    if arch == "cnn" and config.width is None:
        config = replace(config, width=ENSEMBLE_CNN_WIDTH)
    return config


def run_onnx(path: Path, X: np.ndarray, task: str, ds: Dataset | None = None) -> np.ndarray:
    """One member's served output for rows X, from the ONNX file (what the server runs); a table's rows
    (`ds` given) go in as the raw columns a client sends."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if ds is not None and ds.is_table:
        feed = table_feed(ds.feature_columns, X, column_tensor_names(ds))
    else:
        feed = {session.get_inputs()[0].name: X.astype(np.float32)}
    return session.run([MEMBER_OUTPUT[task]], feed)[0]


def column_tensor_names(ds: Dataset) -> list[str]:
    return tensor_names([c.name for c in ds.feature_columns])


def score(task: str, y: np.ndarray, output: np.ndarray) -> dict[str, float]:
    if task == "classification":
        return classification_metrics(y, output)
    return regression_metrics(y, output)


def holdout(ds: Dataset, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, test) row indices: the test rows are never seen by training, search or early stopping."""
    # split() always cuts a validation part too; here it is simply merged back into the rest.
    a, b, test = split(ds, 0.5 * (1 - test_fraction), test_fraction, seed=seed)
    return np.sort(np.concatenate([a, b])), test


def train_ensemble(
    ds: Dataset, rest: np.ndarray, test_idx: np.ndarray, settings: EnsembleSettings, work_dir: Path
) -> EnsembleOutcome:
    """Train on folds of `rest`, export (into `work_dir`) and score every member and the ensemble."""
    settings.validate(ds)
    started = time.perf_counter()
    folds = kfold(ds, rest, settings.members, seed=settings.base.seed)
    X_test, y_test = ds.X[test_idx], ds.y[test_idx]
    metric = metric_name(ds)
    members: list[TrainedMember] = []
    outputs: list[np.ndarray] = []
    for i, (train_idx, val_idx) in enumerate(folds):
        config = member_config(settings, i)
        result = fit(ds, train_idx, val_idx, config, progress=settings.progress)
        path = work_dir / f"member-{i}.onnx"
        if ds.is_table:
            export_table_member(result.model, path, ds.task, ds.X[train_idx[:64]], column_tensor_names(ds))  # type: ignore[arg-type]
        else:
            export_member(result.model, ds.X.shape[1], path, ds.task, sample=ds.X[train_idx[:64]])  # type: ignore[arg-type]
        out = run_onnx(path, X_test, ds.task, ds)
        outputs.append(out)
        best = result.history[result.best_epoch - 1] if result.best_epoch else {}
        members.append(
            TrainedMember(
                index=i,
                config=config,
                history=result.history,
                best_epoch=result.best_epoch,
                val_metrics={
                    "loss": float(result.best_val_loss),
                    metric: float(best.get("val_metric", math.nan)),
                },
                test_metrics=score(ds.task, y_test, out),
                diagnosis=diagnose(result.history, baseline_loss(ds, train_idx)),
                seconds=result.seconds,
                onnx_path=path,
            )
        )
    ens = ensemble_metrics(outputs, y_test, ds.task)  # type: ignore[arg-type]
    keys = list(ens)
    mean_members = {k: float(np.mean([m.test_metrics[k] for m in members])) for k in keys}
    rest_mean, rest_std = standardization(ds.X[rest])
    table = table_record(ds.feature_columns, ds.X[rest], settings.base.min_count) if ds.is_table else None
    return EnsembleOutcome(
        members,
        ens,
        mean_members,
        metric,
        len(test_idx),
        time.perf_counter() - started,
        rest_mean,
        rest_std,
        table,
    )


def write_ensemble_version(
    ds: Dataset, outcome: EnsembleOutcome, repository: Path, name: str, report_dir: Path, description: str
) -> Path:
    """The repository version (atomic); `report_dir` is copied into it as ``report/``."""
    artifacts = [
        MemberArtifact(
            onnx_path=m.onnx_path,
            arch=m.config.arch,
            fold=m.index,
            seed=m.config.seed,
            hyperparameters=_jsonable(asdict(m.config)),
            val_metrics=m.val_metrics,
            test_metrics=m.test_metrics,
        )
        for m in outcome.members
    ]
    return write_version(
        repository,
        name,
        artifacts,
        task=ds.task,  # type: ignore[arg-type]
        labels=ds.labels,
        feature_names=ds.feature_names,
        feature_shape=ds.feature_shape,
        mean=outcome.rest_mean.tolist(),
        std=outcome.rest_std.tolist(),
        ensemble_metrics=outcome.ensemble_metrics,
        description=description,
        report_dir=report_dir,
        table=outcome.table,
    )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, tuple) else list(v)) for k, v in d.items()}


__all__ = [
    "ARCH_CHOICES",
    "ENSEMBLE_CNN_WIDTH",
    "ENSEMBLE_EPOCHS",
    "EnsembleOutcome",
    "EnsembleSettings",
    "TrainedMember",
    "check_name",
    "holdout",
    "resolve_arch",
    "train_ensemble",
    "write_ensemble_version",
]
