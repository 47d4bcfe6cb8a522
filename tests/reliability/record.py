"""Record what each reliability check tried and what happened, for ``docs/reliability.md``.

With ``ENSEMBLE_RELIABILITY_RECORD=DIR`` set, every call appends one JSON line to ``DIR/results.jsonl``;
``benchmarks/reliability_table.py DIR`` turns them into the markdown table. Unset: nothing is written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def record(area: str, case: str, expected: str, observed: str) -> None:
    folder = os.environ.get("ENSEMBLE_RELIABILITY_RECORD")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    row = {"area": area, "case": case, "expected": expected, "observed": observed, "time": time.time()}
    with (Path(folder) / "results.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
