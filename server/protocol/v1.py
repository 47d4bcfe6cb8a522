"""The simple JSON API: ``{"instances": [...]}`` or ``{"inputs": {...}}`` -> ``{"predictions": [...], ...}``.

Three body forms:

- rows of numbers, ``{"instances": [[5.1, 3.5, ...], ...]}``: a matrix model (one ``[-1, F]`` input);
- records, ``{"instances": [{"island": "Biscoe", "bill_mm": 39.1, "sex": null}, ...]}``, one per row;
- columns, ``{"inputs": {"island": ["Biscoe", ...], "bill_mm": [39.1, ...]}}``.

Records and columns are keyed by the table's ORIGINAL column names (``ColumnInput.column``, the names the
training CSV had; V2 uses the tensor names of the metadata instead), and serve table models and the matrix
models that name their features (a numeric-only table). ``null`` is a missing value. Every column must be
given; extra keys are refused (a misspelt column would otherwise count as missing on every row).

A V1 body decodes into the same :class:`~server.protocol.tensors.InferenceRequest` as a V2 one (one
tensor of raw rows under the model's input name, or one per column), so the data plane checks both alike;
the response is written from the same :class:`~server.protocol.tensors.InferenceResponse`, with label
names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from server.errors import BadRequest
from server.manifest import Manifest, TablePreprocessing
from server.protocol.columns import column_numbers
from server.protocol.tensors import BYTES, InferenceRequest, InferenceResponse, InputTensor

DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON object; anything else is a 400 with the reason."""
    if not body:
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = "it is not valid UTF-8" if "utf-8" in str(exc).lower() else "it is not valid JSON"
        raise BadRequest(f"Cannot read the request body: {reason}.") from None
    if not isinstance(value, dict):
        raise BadRequest("The request body must be a JSON object.")
    return value


def to_float_matrix(data: Any, what: str) -> np.ndarray:
    """Nested JSON numbers -> float64 array; ragged rows or non-numbers are a 400.

    numpy is asked to infer the type first: with ``dtype=float64`` it would quietly turn the strings "1"
    and "nan" into numbers and ``null`` into NaN (which ``allow_nonfinite`` would then let through)."""
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"{what} must be numbers in rows of equal length.") from None
    if arr.dtype.kind not in "iuf":
        raise BadRequest(
            f"{what} must hold only numbers (not strings, null, objects, only booleans, "
            "or integers beyond 64 bits)."
        )
    return arr.astype(np.float64, copy=False)


def decode_request(body: bytes, manifest: Manifest, model_name: str) -> InferenceRequest:
    """A ``:predict`` body as a request for the model's input(s) (numbers as FP64, checked and cast to the
    model's FP32 by the data plane; a category column as BYTES holding the JSON values)."""
    doc = parse_json_object(body)
    if "inputs" in doc and "instances" not in doc:
        columns = doc["inputs"]
        if not isinstance(columns, dict):
            raise BadRequest("'inputs' must be an object: each column's name and its list of values.")
        return _table_request(columns, manifest, model_name)
    instances = doc.get("instances")
    table = manifest.is_table
    if not isinstance(instances, list):
        what = "a list of records (objects keyed by column)" if table else "a list of rows of numbers"
        raise BadRequest(f"The request must have 'instances' ({what}) or 'inputs' (lists keyed by column).")
    if not instances:
        raise BadRequest("'instances' is empty; send at least one row.")
    if isinstance(instances[0], dict):
        return _table_request(_records_to_columns(instances, _column_names(manifest)), manifest, model_name)
    if table:
        raise BadRequest(
            'This model takes records keyed by column ({"instances": [{"column": value, ...}]}) '
            'or columns ({"inputs": {"column": [...]}}), not rows of numbers.'
        )
    x = to_float_matrix(instances, "'instances'")
    if x.ndim == 1:
        raise BadRequest("'instances' must be a list of rows (lists of numbers), not one flat list.")
    tensor = InputTensor(manifest.input.name, "FP64", x.shape, x)
    return InferenceRequest(model_name, None, None, {}, (tensor,))


def _column_names(manifest: Manifest) -> list[str]:
    """The columns records and columns are keyed by (the table's names); a matrix model must name them."""
    if manifest.is_table:
        return [c.column for c in manifest.columns]
    names = manifest.input.feature_names
    if not names:
        raise BadRequest("This model does not name its features; send 'instances' as rows of numbers.")
    return names


def _records_to_columns(records: list[Any], names: list[str]) -> dict[str, list[Any]]:
    wanted = set(names)
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for row, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadRequest(f"Record {row} of 'instances' is not an object; send every row as a record.")
        if len(record) != len(names) or record.keys() != wanted:
            unknown = [k for k in record if k not in wanted]
            if unknown:
                raise BadRequest(f"Record {row} has unknown column '{unknown[0][:64]}'; the columns are: "
                                 f"{_listing(names)}.")  # fmt: skip
            absent = next(n for n in names if n not in record)
            raise BadRequest(f"Record {row} has no column '{absent}'; send null for a missing value.")
        for name in names:
            columns[name].append(record[name])
    return columns


def _listing(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _table_request(columns: dict[str, Any], manifest: Manifest, model_name: str) -> InferenceRequest:
    names = _column_names(manifest)
    for key, values in columns.items():
        if key not in names:
            raise BadRequest(f"Unknown column '{key[:64]}'; the columns are: {_listing(names)}.")
        if not isinstance(values, list):
            raise BadRequest(f"Column '{key}' must be a list of values, one per row.")
    for name in names:
        if name not in columns:
            raise BadRequest(f"Column '{name}' is missing; send every column, with null for a missing value.")
    lengths = {len(columns[name]) for name in names}
    if len(lengths) > 1:
        first = names[0]
        other = next(n for n in names if len(columns[n]) != len(columns[first]))
        raise BadRequest(
            f"Column '{other}' has {len(columns[other])} values but column '{first}' has "
            f"{len(columns[first])}; every column must have the same number of rows."
        )
    if 0 in lengths:
        raise BadRequest("The columns are empty; send at least one row.")
    pre = manifest.preprocessing
    missing_text = {"", *(pre.missing_text if isinstance(pre, TablePreprocessing) else ())}
    if not manifest.is_table:  # a matrix model that names its features: the rows in its feature order
        x = np.stack([column_numbers(columns[n], f"Column '{n}'", missing_text) for n in names], axis=1)
        tensor = InputTensor(manifest.input.name, "FP64", x.shape, x)
        return InferenceRequest(model_name, None, None, {}, (tensor,))
    tensors = []
    for spec in manifest.columns:
        values = columns[spec.column]
        if spec.kind == "categorical":  # the JSON values, read as text by the data plane (server.inputs)
            data = np.empty(len(values), dtype=object)
            data[:] = values
            tensors.append(InputTensor(spec.name, BYTES, data.shape, data))
        else:
            x = column_numbers(values, f"Column '{spec.column}' (input '{spec.name}')", missing_text)
            tensors.append(InputTensor(spec.name, "FP64", x.shape, x))
    return InferenceRequest(model_name, None, None, {}, tuple(tensors))


def encode_response(manifest: Manifest, response: InferenceResponse) -> bytes:
    """Classification: predictions are label names; regression: values (a number per row when one target)."""
    results = {t.name: t.data for t in response.outputs}
    if manifest.task == "classification":
        labels = manifest.labels or []
        predictions: Any = [labels[i] for i in results["label"].tolist()]
        extra = {"probabilities": results["probabilities"], "spread": results["spread"]}
    else:
        pred = results["prediction"]
        predictions = pred[:, 0] if pred.shape[1] == 1 else pred
        spread = results["spread"]
        extra = {"spread": spread[:, 0] if spread.shape[1] == 1 else spread}
    doc = {
        "predictions": predictions,
        **extra,
        "model_name": manifest.name,
        "model_version": response.model_version,
    }
    return orjson.dumps(doc, option=DUMPS_OPTIONS)
