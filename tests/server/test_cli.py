import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import main
from testing.repositories import Repository

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-repository", "/definitely/not/here"], "is not a folder"),
        (["--port", "nope"], "invalid int value"),
        (["--device", "tpu"], "invalid choice"),
        (["--port", "70000", "--model-repository", "."], "port"),
        (["--bogus"], "unrecognized arguments"),
        (["--drain-timeout-s", "0", "--model-repository", "."], "drain_timeout_s"),
        (["--repository-poll-interval-s", "-1", "--model-repository", "."], "repository_poll_interval_s"),
    ],
)
def test_bad_arguments_print_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_python_dash_m_server_reports_missing_repository() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "server", "--model-repository", "/nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not a folder" in r.stderr


def test_sigterm_drains_and_exits_0(repo: Repository, tmp_path: Path) -> None:
    import signal

    from testing.server_process import ServerProcess

    proc = ServerProcess(repo.root, {"ENSEMBLE_WARMUP_RUNS": "0"}, tmp_path / "log")
    try:
        proc.wait_live()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) == 0
    finally:
        proc.stop()


def test_a_port_already_taken_exits_3(repo: Repository) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "server", "--model-repository", str(repo.root), "--port", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": ""},
        )  # fmt: skip
    assert r.returncode == 3 and "address already in use" in r.stderr.lower()


@pytest.mark.parametrize("policy", ["1" * 5000, "1,2," + "1" * 19])
def test_a_version_policy_past_18_digits_is_a_settings_error(policy: str) -> None:
    """Past Python's int-digit limit (4,300) int() raised out of the validator: now one line, exit 2."""
    r = subprocess.run(
        [sys.executable, "-m", "server", "--model-repository", str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "", "ENSEMBLE_VERSION_POLICY": policy},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-500:]
    assert r.stderr.strip().count("\n") == 0 and "version_policy" in r.stderr, r.stderr[-500:]
    assert len(r.stderr) < 1000
