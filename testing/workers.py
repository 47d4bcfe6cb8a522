"""Look inside a running ``--workers N`` server from a test: its worker processes and their metric files."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict


def worker_pids(parent: int) -> list[int]:
    """The parent's worker processes (spawned interpreters; not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def wait_workers(parent: int, n: int, timeout_s: float = 30) -> list[int]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        pids = worker_pids(parent)
        if len(pids) == n:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"the server does not have {n} workers: {worker_pids(parent)}")


def multiprocess_dir(worker: int) -> Path:
    """PROMETHEUS_MULTIPROC_DIR as the parent gave it to the worker (its environment at start)."""
    env = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    for item in env:
        if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(item.split(b"=", 1)[1].decode())
    raise AssertionError(f"worker {worker} has no PROMETHEUS_MULTIPROC_DIR")


def requests_in_file(folder: Path, pid: int) -> float:
    """The ``ensemble_requests_total`` one process wrote to its own counter file (all label sets)."""
    path = folder / f"counter_{pid}.db"
    if not path.exists():
        return 0.0
    total = 0.0
    for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
        if json.loads(key)[1] == "ensemble_requests_total":
            total += value
    return total


def scrape(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of one metric's samples whose labels include `labels` (0 when absent)."""
    text = client.get("/metrics", headers={"Connection": "close"}).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if not m:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total
