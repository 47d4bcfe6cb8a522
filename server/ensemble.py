"""Run an ensemble's members and average them (``server.averaging``: mean, spread, for classes the label).

How the members run, picked by ``member_execution`` (three ways, and ``auto`` to choose among them):

- ``sequential``: one onnxruntime session per member, run in turn;
- ``fused``: the member graphs merged into ONE graph in memory (names prefixed per member, the inputs
  shared, one output per member), so a single ``session.run`` computes every member; on the CPU at small
  batches this saves the per-call overhead M-1 times;
- ``parallel``: the per-member sessions on a thread pool (onnxruntime releases the GIL);
- ``auto``: time each at batch 1 and at the largest batch during warm-up and keep the fastest.

A matrix model's rows are one ``[N, F]`` array fed to its one input; a table model's rows are a structured
array (``server.inputs``), each field fed to its column's ``[N, 1]`` input (text or float32).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.averaging import average
from server.inputs import table_inputs
from server.manifest import Manifest
from server.runtime import SessionInfo, make_session

Feed = dict[str, np.ndarray]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- graph fusion
def fuse_members(
    paths: Sequence[Path], input_names: Sequence[str], output_name: str
) -> tuple[bytes, list[str]]:
    """Merge member graphs into one model: every member reads the shared inputs (`input_names`, which
    every member has), each keeps its own output.

    Returns the serialized model and the fused output names in member order.
    """
    import onnx  # only needed for fusion; a server without onnx still runs sequential/parallel
    from onnx import compose, helper

    models = [onnx.load(str(p)) for p in paths]
    nodes, inits, funcs, outputs, out_names = [], [], [], [], []
    opsets: dict[str, int] = {}
    graph_inputs: list[onnx.ValueInfoProto] = []
    for i, model in enumerate(models):
        prefix = f"m{i}_"
        # Prefix everything so that identical tensor/node names in two members cannot collide.
        model = compose.add_prefix(model, prefix)
        g = model.graph
        own = {value.name: value for value in g.input}
        for j, input_name in enumerate(input_names):
            value = own.get(prefix + input_name)
            if value is None:
                raise ValueError(f"member {i} has no input {input_name!r}")
            if i == 0:
                shared = onnx.ValueInfoProto()
                shared.CopyFrom(value)
                shared.name = input_name
                graph_inputs.append(shared)
            nodes.append(
                helper.make_node("Identity", [input_name], [prefix + input_name], name=f"{prefix}in{j}")
            )
        nodes.extend(g.node)
        inits.extend(g.initializer)
        funcs.extend(model.functions)
        out = next(o for o in g.output if o.name == prefix + output_name)
        outputs.append(out)
        out_names.append(out.name)
        for op in model.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    graph = helper.make_graph(nodes, "fused_ensemble", graph_inputs, outputs, initializer=inits)
    fused = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        functions=funcs,
    )
    fused.ir_version = max(m.ir_version for m in models)
    onnx.checker.check_model(fused)
    return fused.SerializeToString(), out_names


# ---------------------------------------------------------------- runners
class _Runner:
    """Runs every member on one batch (its inputs by name); returns ``(members, rows, width)``."""

    name = ""

    def __call__(self, feed: Feed) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SequentialRunner(_Runner):
    name = "sequential"

    def __init__(self, sessions: list, output_name: str) -> None:
        self.sessions, self.output_name = sessions, output_name

    def __call__(self, feed: Feed) -> np.ndarray:
        return np.stack([s.run([self.output_name], feed)[0] for s in self.sessions])


class ParallelRunner(SequentialRunner):
    name = "parallel"

    def __init__(self, sessions: list, output_name: str) -> None:
        super().__init__(sessions, output_name)
        self.pool = ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix="member")

    def __call__(self, feed: Feed) -> np.ndarray:
        futures = [self.pool.submit(s.run, [self.output_name], feed) for s in self.sessions]
        return np.stack([f.result()[0] for f in futures])

    def close(self) -> None:
        self.pool.shutdown(wait=False)


class FusedRunner(_Runner):
    name = "fused"

    def __init__(self, session, output_names: list[str]) -> None:
        self.session, self.output_names = session, output_names

    def __call__(self, feed: Feed) -> np.ndarray:
        return np.stack(self.session.run(self.output_names, feed))


def _time(run: Callable[[Feed], np.ndarray], x: Feed, repeats: int) -> float:
    """Best-of-`repeats` seconds for one call (the minimum is the least noisy on a busy machine)."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        run(x)
        best = min(best, time.perf_counter() - t0)
    return best


@dataclass
class Timing:
    batch1_s: float
    batch_max_s: float


class Ensemble:
    """A loaded, warmed-up ensemble: ``predict(x)`` returns every served output for the rows of `x`."""

    def __init__(
        self,
        manifest: Manifest,
        version_dir: Path,
        *,
        device: str = "auto",
        gpu_device_id: int = 0,
        intra_op_threads: int = 1,
        member_execution: str = "auto",
        max_batch_size: int = 256,
        warmup_runs: int = 3,
    ) -> None:
        self.manifest = manifest
        self.task = manifest.task
        self.table = manifest.is_table
        self.input_names = [c.name for c in manifest.inputs]
        self.n_features = 0 if self.table else manifest.input.shape[1]
        self.width = manifest.output("spread").shape[1]
        out_name = manifest.member_output
        paths = [version_dir / m.file for m in manifest.members]
        t0 = time.perf_counter()

        candidates: dict[str, _Runner] = {}
        infos: dict[str, SessionInfo] = {}
        need_members = member_execution in ("auto", "sequential", "parallel")
        if member_execution in ("auto", "fused"):
            try:
                fused, names = fuse_members(paths, self.input_names, out_name)
                s, info = make_session(fused, device, gpu_device_id, intra_op_threads)
                candidates["fused"] = FusedRunner(s, names)
                infos["fused"] = info
            except Exception as exc:  # a graph onnx cannot merge still serves, unfused
                log.warning("%s: cannot fuse the members (%s); running them one by one", manifest.name, exc)
                need_members = True
        if need_members:
            sessions = []
            for p in paths:
                s, info = make_session(p, device, gpu_device_id, intra_op_threads)
                sessions.append(s)
                infos["members"] = info
            if member_execution in ("auto", "parallel") and len(sessions) > 1:
                candidates["parallel"] = ParallelRunner(sessions, out_name)
            if member_execution != "parallel" or len(sessions) == 1:
                candidates["sequential"] = SequentialRunner(sessions, out_name)

        # Warm-up doubles as the measurement: each candidate runs at batch 1 and at the largest batch.
        rng = np.random.default_rng(0)
        x1 = self.feed(synthetic_rows(manifest, 1, rng))
        xb = self.feed(synthetic_rows(manifest, max_batch_size, rng))
        self.timings: dict[str, Timing] = {}
        expected = (len(paths), 1, self.width)
        for name, runner in candidates.items():
            got = runner(x1).shape  # first call allocates; keep it out of the figures
            if got != expected:
                raise ValueError(f"members produce {got[1:]} per row, the manifest says {expected[1:]}")
            runner(xb)
            self.timings[name] = Timing(_time(runner, x1, warmup_runs), _time(runner, xb, warmup_runs))
        self.runner = self._pick(candidates)
        for runner in candidates.values():
            if runner is not self.runner:
                runner.close()  # only a parallel runner holds something (its pool); sessions are shared
        self.execution = self.runner.name
        self.info = infos["fused" if self.execution == "fused" else "members"]
        self.members = len(paths)
        self.warmup_s = time.perf_counter() - t0

    def _pick(self, candidates: dict[str, _Runner]) -> _Runner:
        if len(candidates) == 1:
            return next(iter(candidates.values()))
        best1 = min(t.batch1_s for t in self.timings.values())
        bestb = min(t.batch_max_s for t in self.timings.values())

        # Relative cost at both ends: a strategy 2x slower at batch 1 and equal at the max scores 3.
        def score(name: str) -> float:
            t = self.timings[name]
            return t.batch1_s / best1 + t.batch_max_s / bestb

        figures = ", ".join(
            f"{n}: {t.batch1_s * 1e3:.3f} ms @1 / {t.batch_max_s * 1e3:.3f} ms @max"
            for n, t in self.timings.items()
        )
        chosen = min(candidates, key=score)
        log.info("%s: member execution measured (%s): %s", self.manifest.name, figures, chosen)
        return candidates[chosen]

    def feed(self, x: np.ndarray) -> Feed:
        """The graph inputs for rows `x`: the matrix itself, or each column of a table's structured rows."""
        if not self.table:
            return {self.input_names[0]: x}
        return {name: np.ascontiguousarray(x[name]).reshape(-1, 1) for name in self.input_names}

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return average(self.runner(self.feed(x)), self.task)

    def close(self) -> None:
        self.runner.close()


def synthetic_rows(manifest: Manifest, n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows to warm a model up with: random numbers, or for a table every kind of value a client may send
    (each category, a missing value, an unseen one; numbers with NaN where the column accepts it)."""
    if not manifest.is_table:
        return rng.standard_normal((n, manifest.input.shape[1])).astype(np.float32)
    rows = np.empty(n, dtype=table_inputs(manifest).dtype)
    for column in manifest.columns:
        if column.kind == "categorical":
            choices = np.array([*(column.categories or ()), "", "\x00unseen"], dtype=object)
            rows[column.name] = choices[np.arange(n) % len(choices)]
        else:
            values = rng.standard_normal(n).astype(np.float32)
            if column.accepts_missing:
                values[1::3] = np.nan
            rows[column.name] = values
    return rows
