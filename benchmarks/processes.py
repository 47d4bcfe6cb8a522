"""Start the systems under test as process groups on 127.0.0.1, wait for readiness, read RSS, stop them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    started_at: float  # time.perf_counter() when the process was started
    ready_seconds: float | None = None  # from process start to the first 200 on the readiness path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Service:
    """Start `argv` in its own process group (so stop() ends its children too), output to `log`."""
    port = int(argv[argv.index("--port") + 1])
    repo_root = str(Path(__file__).resolve().parent.parent)
    full_env = dict(os.environ, PYTHONPATH=repo_root, **(env or {}))
    started_at = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=repo_root, start_new_session=True
        )
    return Service(name, process, port, log, started_at=started_at)


def wait_ready(service: Service, path: str, timeout_s: float) -> bool:
    """Poll GET `path` until 200; record the time from process start. False on timeout or early exit."""
    started = service.started_at
    deadline = started + timeout_s
    while time.perf_counter() < deadline:
        if service.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(service.base_url + path, timeout=1) as response:
                if response.status == 200:
                    service.ready_seconds = time.perf_counter() - started
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.02)
    return False


def post_once(url: str, body: bytes, headers: dict[str, str], timeout_s: float = 10) -> tuple[int, bytes]:
    """One request (to check a payload is accepted before loading a cell with it)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc).encode()


def rss_bytes(pid: int) -> int | None:
    """Resident set size of one process, from /proc (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_ticks(pid: int) -> int | None:
    """User + system CPU time of a process (all its threads), in clock ticks, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))


def wait_idle(pid: int, timeout_s: float = 5.0, window_s: float = 0.2) -> float:
    """Wait until the process burns (almost) no CPU for `window_s`: a slow server keeps working through
    its backlog after the load generator stops, and that must not eat into the next system's cell.
    Returns the seconds waited (bounded by `timeout_s`)."""
    started = time.perf_counter()
    last = cpu_ticks(pid)
    while time.perf_counter() - started < timeout_s:
        time.sleep(window_s)
        now = cpu_ticks(pid)
        if now is None or last is None or now - last <= 1:
            break
        last = now
    return time.perf_counter() - started


def stop(service: Service, grace_s: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `grace_s`."""
    if service.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.process.pid, signal.SIGKILL)  # children that outlived their parent
    with contextlib.suppress(subprocess.TimeoutExpired):
        service.process.wait(grace_s)


def uvicorn_argv(app: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port),
        "--log-level", "warning", "--no-access-log", *extra,
    ]  # fmt: skip
