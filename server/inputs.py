"""A decoded request checked against the model it asks for: the rows the ensemble runs on.

Data-plane side, so every transport (V2, V1, gRPC) gets the same checks and the same messages. A matrix
model takes one ``[-1, F]`` FP32 input (``manifest.input``); numeric datatypes are cast to it. A table model
takes one input per column (``manifest.columns``, :class:`TableInputs`): the rows are then a numpy
structured array with one field per column (text as objects, numbers as float32), so the batcher
concatenates and splits them like any other rows and the ensemble feeds each field to its graph input.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from server.errors import BadRequest
from server.manifest import ColumnInput, InputSpec, Manifest, TablePreprocessing
from server.protocol.columns import category_texts, column_numbers
from server.protocol.tensors import BYTES, InferenceRequest, InputTensor, ProtocolError

# Numeric datatypes a client may send; all are cast to the model's FP32 (JSON integers were already
# checked to be whole and in range by the decoder). BOOL and BYTES are not features.
CASTABLE = frozenset({"FP32", "FP64", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16", "UINT32"})


class ColumnCounter(Protocol):
    """Where the unseen categories and missing values of a request are counted (server.metrics)."""

    def column_values(self, column: str, unseen: int, missing: int) -> None: ...


def read_rows(
    request: InferenceRequest, manifest: Manifest, allow_nonfinite: bool, counter: ColumnCounter | None = None
) -> np.ndarray:
    """The rows of `request` for `manifest`'s model: ``[N, F]`` float32, or a table's structured rows."""
    if manifest.is_table:
        return table_inputs(manifest).read(request, allow_nonfinite, counter)
    spec = manifest.input
    return model_input(request, spec, allow_nonfinite, allow_missing=spec.accepts_missing)


def model_input(
    request: InferenceRequest, spec: InputSpec, allow_nonfinite: bool, *, allow_missing: bool = False
) -> np.ndarray:
    """The ``[N, F]`` FP32 rows of `request` for a model whose input is `spec` (N >= 1).

    Refuses (400) an unknown or missing input, a datatype that is not a number, a shape other than
    ``[N, F]``, no rows, and NaN/infinite features unless `allow_nonfinite` (binary data can carry them;
    so can an FP64 value too large for FP32). `allow_missing`: NaN (a missing value: JSON ``null``) is
    accepted, the graph fills it. An FP32 binary input stays a zero-copy view of the body."""
    inputs = request.inputs
    if len(inputs) != 1 or inputs[0].name != spec.name:
        names = [tensor.name for tensor in inputs]
        unknown = [name for name in names if name != spec.name]
        what = f"unknown input '{unknown[0]}'" if unknown else f"no input '{spec.name}'"
        raise ProtocolError(f"The request has {what}; this model takes exactly one input, '{spec.name}'.")
    tensor = inputs[0]
    if tensor.datatype not in CASTABLE:
        raise ProtocolError(
            f"Input '{spec.name}' is {tensor.datatype}; send {spec.datatype} (or another numeric datatype, "
            f"which is cast to {spec.datatype})."
        )
    return check_features(tensor.data, spec.shape[1], allow_nonfinite, allow_missing)


_SUM = np.add.reduce  # the ufunc itself: ndarray.sum() goes through a Python wrapper first


def check_features(
    x: np.ndarray, n_features: int, allow_nonfinite: bool, allow_missing: bool = False
) -> np.ndarray:
    """Check a ``[rows, features]`` matrix against the model; returns it as C-contiguous float32."""
    if x.ndim != 2:
        raise BadRequest(f"The input must be 2-D [rows, {n_features}]; got {x.ndim}-D.")
    if x.shape[0] < 1:
        raise BadRequest("The input has no rows.")
    if x.shape[1] != n_features:
        raise BadRequest(f"Each row must have {n_features} features; got {x.shape[1]}.")
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        # Cast first: a finite float64 such as 1e300 becomes inf in float32.
        with np.errstate(over="ignore"):
            x = np.ascontiguousarray(x, dtype=np.float32)
    # A finite sum means every value is finite (NaN and infinities propagate): one reduction, no temporary,
    # on the hot path; only a sum that is not finite (a bad value, or an overflow) pays for the exact check.
    if (
        not allow_nonfinite
        and not math.isfinite(_SUM(x, axis=None, dtype=np.float64))
        and not np.isfinite(x).all()
    ):
        if not allow_missing:
            raise BadRequest(
                "The input contains NaN or infinite values (or null, or values too large for FP32); "
                "this model does not accept missing values."
            )
        if np.isinf(x).any():
            raise BadRequest("The input contains infinite values (or values too large for FP32).")
    return x


# ------------------------------------------------------------------------------------------ tables


class TableInputs:
    """A table model's columns, prepared once per model (the categories as sets, the row dtype)."""

    def __init__(self, manifest: Manifest) -> None:
        self.columns: list[ColumnInput] = manifest.columns
        self.by_name = {c.name: c for c in self.columns}
        pre = manifest.preprocessing
        words = pre.missing_text if isinstance(pre, TablePreprocessing) else []
        self.missing_text = frozenset(["", *words])
        self.known = {c.name: frozenset(c.categories or ()) for c in self.columns}
        self.dtype = np.dtype(
            [(c.name, object if c.kind == "categorical" else np.float32) for c in self.columns]
        )
        self.listing = ", ".join(f"'{c.name}'" for c in self.columns)

    def read(
        self, request: InferenceRequest, allow_nonfinite: bool, counter: ColumnCounter | None = None
    ) -> np.ndarray:
        """Every column of `request` checked and converted; a 400 names the column (and the row)."""
        sent = {}
        for tensor in request.inputs:
            if tensor.name not in self.by_name:
                raise ProtocolError(
                    f"The request has unknown input '{tensor.name}'; this model takes one input per column: "
                    f"{self.listing}."
                )
            sent[tensor.name] = tensor
        rows: int | None = None
        first = ""
        for column in self.columns:
            tensor = sent.get(column.name)
            if tensor is None:
                raise ProtocolError(
                    f"The request has no input '{column.name}' (column '{column.column}'); send every "
                    "column, with null for a missing value."
                )
            shape = tensor.data.shape
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise ProtocolError(
                    f"Input '{column.name}' must have shape [rows] or [rows, 1]; got {list(shape)}."
                )
            if rows is None:
                rows, first = shape[0], column.name
            elif shape[0] != rows:
                raise ProtocolError(
                    f"Input '{column.name}' has {shape[0]} rows but input '{first}' has {rows}; every column "
                    "must have the same number of rows."
                )
        if not rows:
            raise BadRequest("The input has no rows.")
        out = np.empty(rows, dtype=self.dtype)
        counts: list[tuple[str, int, int]] = []  # recorded once every column is good
        for column in self.columns:
            tensor = sent[column.name]
            if column.kind == "categorical":
                out[column.name] = self._categories(column, tensor, counts)
            else:
                out[column.name] = self._numbers(column, tensor, allow_nonfinite, counts)
        if counter is not None:
            for name, unseen, missing in counts:
                counter.column_values(name, unseen, missing)
        return out

    def _categories(
        self, column: ColumnInput, tensor: InputTensor, counts: list[tuple[str, int, int]]
    ) -> np.ndarray:
        who = f"Column '{column.column}' (input '{column.name}')"
        if tensor.datatype not in CASTABLE and tensor.datatype not in (BYTES, "BOOL"):
            raise ProtocolError(f"{who} is categorical: send BYTES (text), not {tensor.datatype}.")
        # .tolist(): numbers as Python ints and floats, written as training wrote them (3.0 -> "3").
        values = tensor.data.reshape(-1)
        texts = category_texts(values if tensor.datatype == BYTES else values.tolist(), who)
        known, missing_text = self.known[column.name], self.missing_text
        missing = unseen = 0
        for text in texts:
            if text not in known:
                if text in missing_text:
                    missing += 1
                else:
                    unseen += 1
        if missing or unseen:
            counts.append((column.column, unseen, missing))
        return texts

    def _numbers(
        self,
        column: ColumnInput,
        tensor: InputTensor,
        allow_nonfinite: bool,
        counts: list[tuple[str, int, int]],
    ) -> np.ndarray:
        who = f"Column '{column.column}' (input '{column.name}')"
        if tensor.datatype == BYTES:  # JSON values (numbers, null, the missing words) or binary text
            x = column_numbers(tensor.data.reshape(-1).tolist(), who, self.missing_text)
        elif tensor.datatype in CASTABLE:
            x = tensor.data.reshape(-1)
        else:
            raise ProtocolError(f"{who} is numeric: send FP32 (or FP64, INT64...), not {tensor.datatype}.")
        if x.dtype != np.float32:
            with np.errstate(over="ignore"):  # an FP64 value too large for FP32 becomes inf: refused below
                x = x.astype(np.float32)
        if np.isfinite(x).all():  # the usual request: one check
            return x
        nan = np.isnan(x)
        n_missing = int(nan.sum())
        if n_missing and not (column.accepts_missing or allow_nonfinite):
            row = int(np.argmax(nan))
            raise ProtocolError(f"{who}, row {row}: a missing value, which this column does not accept.")
        if not allow_nonfinite and np.isinf(x).any():
            row = int(np.argmax(np.isinf(x)))
            raise ProtocolError(f"{who}, row {row}: the value is infinite (or too large for FP32).")
        if n_missing:
            counts.append((column.column, 0, n_missing))
        return x


_TABLES: dict[int, tuple[Manifest, TableInputs]] = {}


def table_inputs(manifest: Manifest) -> TableInputs:
    """The prepared columns of a table model (made once per manifest; the manifest is kept alongside, so
    its id is not reused while the entry lives)."""
    found = _TABLES.get(id(manifest))
    if found is None or found[0] is not manifest:
        if len(_TABLES) > 256:  # old versions after many reloads
            _TABLES.clear()
        found = _TABLES[id(manifest)] = (manifest, TableInputs(manifest))
    return found[1]
