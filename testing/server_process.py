"""Start processes under test on 127.0.0.1 (our server, or any ASGI app under uvicorn), wait until they
answer, read their memory and CPU from /proc, and stop them with everything they started.

One launcher for tests/ and benchmarks/: each process gets its own session, so stopping it also ends the
worker processes it forked, and a test that fails half-way leaves nothing running.
"""

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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import httpx

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Process:
    """A command started in its own session with its output in `log`; `port` is where it listens."""

    def __init__(
        self,
        argv: Sequence[str],
        port: int,
        log: Path,
        env: dict[str, str] | None = None,
        *,
        name: str = "",
        pythonpath: Path = ROOT,
    ) -> None:
        self.name = name or Path(argv[0]).name
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.log = log
        self.ready_seconds: float | None = None  # from start to the first 200 seen by wait_ready
        # `pythonpath` (the code to run) first; an inherited PYTHONPATH stays after it (the GPU check
        # installs packages into a folder named there).
        path = os.pathsep.join(p for p in (str(pythonpath), os.environ.get("PYTHONPATH", "")) if p)
        self._log_file: IO[bytes] = log.open("wb")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            list(argv),
            cwd=pythonpath,
            env={**os.environ, "PYTHONPATH": path, **(env or {})},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, path: str, timeout_s: float) -> bool:
        """Poll GET `path` until it answers 200 and record `ready_seconds`; False on timeout or exit."""
        deadline = self.started_at + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as response:
                    if response.status == 200:
                        self.ready_seconds = time.perf_counter() - self.started_at
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.02)
        return False

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process (a server drains its workers), then SIGKILL whatever is left of its session."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # children that outlived their parent
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log_file.close()


class ServerProcess(Process):
    """``python -m server`` on a free port, serving `repo`, configured by `env` (``ENSEMBLE_*``)."""

    def __init__(
        self,
        repo: Path,
        env: dict[str, str],
        log: Path,
        *,
        args: Sequence[str] = (),
        pythonpath: Path = ROOT,
        name: str = "server",
    ) -> None:
        port = free_port()
        self.grpc_port = free_port()  # every test server serves gRPC too, on a port of its own
        self.grpc_target = f"{HOST}:{self.grpc_port}"
        # No --host: the default (127.0.0.1) is what tests rely on, and a test may set ENSEMBLE_HOST.
        argv = [sys.executable, "-m", "server", "--model-repository", str(repo), "--port", str(port)]
        argv += ["--grpc-port", str(self.grpc_port), *args]
        super().__init__(argv, port, log, env, name=name, pythonpath=pythonpath)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait_live(self, timeout_s: float = 30) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_tail()}")
            try:
                if self.client.get("/v2/health/live").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.02)
        raise TimeoutError("server never became live")

    def wait_loaded(self, timeout_s: float = 60) -> None:
        """Until the first repository scan is over (ready, or not ready only because of broken models)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            r = self.client.get("/v2/health/ready")
            if r.status_code == 200 or not r.json()["loading"]:
                return
            time.sleep(0.05)
        raise TimeoutError("server never finished loading")

    def stop(self, grace_s: float = 10.0) -> None:
        self.client.close()
        super().stop(grace_s)


def started_server(
    repo: Path, env: dict[str, str], log: Path, *, live_s: float = 30, loaded_s: float = 60
) -> ServerProcess:
    """A server that is live and has finished its first repository scan (stopped if it never gets there)."""
    proc = ServerProcess(repo, env, log)
    try:
        proc.wait_live(live_s)
        proc.wait_loaded(loaded_s)
    except BaseException:
        proc.stop()
        raise
    return proc


@contextlib.contextmanager
def running_server(repo: Path, env: dict[str, str], log: Path) -> Iterator[ServerProcess]:
    """`started_server`, stopped on exit."""
    proc = started_server(repo, env, log)
    try:
        yield proc
    finally:
        proc.stop()


def uvicorn_process(app: str, log: Path, *extra: str, env: dict[str, str] | None = None) -> Process:
    """An ASGI app (``module:attribute``) under uvicorn on a free port, without access logs."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port),
            "--log-level", "warning", "--no-access-log", *extra]  # fmt: skip
    return Process(argv, port, log, env, name=app.split(":")[0].rsplit(".", 1)[-1])


def wait_for(condition: Callable[[], bool], what: str = "condition", timeout_s: float = 20) -> None:
    """Poll `condition` every 50 ms until it holds; fail the test after `timeout_s`."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


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
    its backlog after the load generator stops, and that must not eat into the next measurement.
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
