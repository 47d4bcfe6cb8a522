"""Build the serving image with podman and check it end to end (`make image-test`).

Steps, each timed: (1) a Debian bookworm base image made locally with mmdebstrap (no registry is reachable
here; the tarball is cached under .cache/image and imported once per storage), (2) `podman build` of the
Dockerfile with the CPU onnxruntime, (3) a container on a read-only root filesystem serving a tiny
ensemble read-only from /models: readiness, one V2 infer and one V1 predict checked against numpy,
/metrics, the HEALTHCHECK command, the OpenTelemetry packages, the server not running as root, and a
clean drain on `podman stop` (exit code 0).

Podman runs as root inside a sandbox with no systemd: cgroupfs, file events, runc, and a private storage
(overlay, else vfs) under .cache/image, set through CONTAINERS_CONF / CONTAINERS_STORAGE_CONF so that the
host's configuration is left alone. Exit code 0 on success; otherwise one line per failed step on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from testing.repositories import Repository, tiny_repository  # noqa: E402 (the root must be on sys.path first)

CACHE = ROOT / ".cache" / "image"
MODEL_NAME, INPUT_NAME = "tiny", "input"  # testing.repositories.tiny_repository
BASE_TAG = "localhost/ensemble-base:bookworm"
BASE_TARBALL = CACHE / "ensemble-base-bookworm.tar"
IMAGE_TAG = "localhost/ensemble-serving:image-test"
DEBIAN_MIRROR = os.environ.get("ENSEMBLE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The sandbox's default hard limits are above what runc may set for the container; these are ample.
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
READY_TIMEOUT_S = float(os.environ.get("ENSEMBLE_IMAGE_TEST_READY_TIMEOUT_S", "180"))
STOP_TIMEOUT_S = 30
PROBE_INSIDE = (
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=3)"
)

OTEL_INSIDE = (
    "from opentelemetry.sdk.trace import TracerProvider; "
    "from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter"
)


class StepFailed(RuntimeError):
    """A step failed; the message says which and why, in one sentence."""


def log(message: str) -> None:
    print(f"[image-test] {message}", flush=True)


def podman_env(driver: str) -> dict[str, str]:
    """Environment pointing podman at private config files written under .cache/image."""
    conf_dir = CACHE / "containers"
    conf_dir.mkdir(parents=True, exist_ok=True)
    storage = conf_dir / f"storage-{driver}.conf"
    storage.write_text(
        "[storage]\n"
        f'driver = "{driver}"\n'
        f'runroot = "/run/ensemble-image-test/{driver}"\n'
        f'graphroot = "{CACHE / ("storage-" + driver)}"\n'
    )
    containers = conf_dir / "containers.conf"
    containers.write_text(
        '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nruntime = "runc"\n'
        '[containers]\nlog_driver = "k8s-file"\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(containers), "CONTAINERS_STORAGE_CONF": str(storage)}


def run(
    cmd: list[str], env: dict[str, str], timeout: float = 600, check: bool = True, quiet: bool = False
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
        raise StepFailed(f"`{' '.join(cmd[:4])} ...` exited {proc.returncode}:\n" + "\n".join(tail))
    if not quiet and proc.stdout.strip():
        for line in proc.stdout.strip().splitlines()[-3:]:
            log(f"  {line}")
    return proc


def choose_storage() -> dict[str, str]:
    """overlay is much faster than vfs for builds; fall back to vfs where overlay mounts are refused."""
    forced = os.environ.get("ENSEMBLE_IMAGE_TEST_STORAGE_DRIVER")
    for driver in [forced] if forced else ["overlay", "vfs"]:
        env = podman_env(driver)
        probe = subprocess.run(["podman", "info"], env=env, capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            log(f"podman storage driver: {driver}")
            return env
        log(f"storage driver {driver} unusable: {probe.stderr.strip().splitlines()[-1:]}")
    raise StepFailed("podman works with neither the overlay nor the vfs storage driver here")


def ensure_base_image(env: dict[str, str]) -> float | None:
    """Return seconds spent building the base tarball, or None when a cached one was used."""
    if run(["podman", "image", "exists", BASE_TAG], env, check=False).returncode == 0:
        log(f"base image {BASE_TAG}: cached in podman storage")
        return None
    seconds = None
    if not BASE_TARBALL.exists():
        if shutil.which("mmdebstrap") is None:
            raise StepFailed(
                "mmdebstrap is not installed (apt-get install mmdebstrap) and no cached base tarball"
            )
        log(f"building the base image with mmdebstrap from {DEBIAN_MIRROR} (about 2 minutes) ...")
        BASE_TARBALL.parent.mkdir(parents=True, exist_ok=True)
        partial = BASE_TARBALL.with_suffix(".partial.tar")
        start = time.monotonic()
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                # Documentation and translations are dead weight in a server image.
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--format=tar",
                "bookworm",
                str(partial),
                DEBIAN_MIRROR,
            ],
            env,
            timeout=900,
            quiet=True,
        )
        partial.rename(BASE_TARBALL)
        seconds = time.monotonic() - start
        log(f"base tarball built in {seconds:.1f} s ({BASE_TARBALL.stat().st_size / 1e6:.0f} MB)")
    run(["podman", "import", "--change", 'CMD ["/bin/bash"]', str(BASE_TARBALL), BASE_TAG], env, quiet=True)
    log(f"imported {BASE_TARBALL.name} as {BASE_TAG}")
    return seconds


def build_image(env: dict[str, str]) -> float:
    """Build the Dockerfile on the local base with the CPU onnxruntime; returns seconds."""
    cmd = [
        "podman",
        "build",
        "--isolation=chroot",
        # The docker format keeps HEALTHCHECK (the OCI image format has no field for it).
        "--format=docker",
        "--build-arg",
        f"BASE_IMAGE={BASE_TAG}",
        "--build-arg",
        "ORT_PACKAGE=onnxruntime",
        "--tag",
        IMAGE_TAG,
    ]
    # pip in the build must trust the same CAs as this host (a TLS-inspecting proxy adds its own); the
    # bundle is mounted for the RUN steps only and never lands in the image.
    host_ca = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
    if host_ca.is_file():
        cmd += ["--volume", f"{host_ca}:/etc/ssl/certs/ca-certificates.crt:ro"]
    log("building the image (pip installs the serving core and onnxruntime from PyPI) ...")
    start = time.monotonic()
    run([*cmd, str(ROOT)], env, timeout=900, quiet=True)
    seconds = time.monotonic() - start
    log(f"image built in {seconds:.1f} s")
    return seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: Any = None, timeout: float = 10) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_ready(base: str, container: str, env: dict[str, str]) -> float:
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT_S:
        state = run(["podman", "inspect", "--format", "{{.State.Status}}", container], env, quiet=True)
        if state.stdout.strip() != "running":
            raise StepFailed(f"the container stopped before it was ready (state {state.stdout.strip()})")
        try:
            status, _ = http("GET", f"{base}/v2/health/ready", timeout=2)
            if status == 200:
                return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    # Tell a server that never became ready from one that only binds the container's loopback.
    inside = run(
        ["podman", "exec", container, "python3", "-c", PROBE_INSIDE],
        env,
        check=False,
        quiet=True,
    )
    if inside.returncode == 0:
        raise StepFailed(
            "the server is ready inside the container but not on the published port: it probably binds"
            " 127.0.0.1; ENSEMBLE_HOST=0.0.0.0 (set by the image) must take effect"
        )
    raise StepFailed(f"/v2/health/ready did not answer 200 within {READY_TIMEOUT_S:.0f} s")


def check_serving(base: str, repo: Repository) -> None:
    rows = np.array([[0.1, 0.2, 0.3, 0.4], [1.5, -0.5, 0.25, 2.0]], dtype=np.float32)
    expected = repo.expected(rows, MODEL_NAME)
    body = {
        "inputs": [
            {"name": INPUT_NAME, "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
        ]
    }
    status, raw = http("POST", f"{base}/v2/models/{MODEL_NAME}/infer", body)
    if status != 200:
        raise StepFailed(f"V2 infer answered {status}: {raw[:300]!r}")
    outputs = {o["name"]: o for o in json.loads(raw)["outputs"]}
    got = np.asarray(outputs["probabilities"]["data"], dtype=np.float64).reshape(expected.shape)
    if not np.allclose(got, expected, atol=1e-5):
        raise StepFailed(f"V2 probabilities {got.tolist()} differ from numpy's {expected.tolist()}")
    labels = np.asarray(outputs["label"]["data"]).reshape(-1)
    if labels.tolist() != expected.argmax(axis=1).tolist():
        raise StepFailed(
            f"V2 labels {labels.tolist()} differ from the argmax {expected.argmax(axis=1).tolist()}"
        )
    log("V2 infer: probabilities and labels match numpy")

    status, raw = http("POST", f"{base}/v1/models/{MODEL_NAME}:predict", {"instances": rows.tolist()})
    if status != 200:
        raise StepFailed(f"V1 predict answered {status}: {raw[:300]!r}")
    predictions = json.loads(raw).get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(rows):
        raise StepFailed(f"V1 predict returned {raw[:300]!r}, not one prediction per instance")
    log("V1 predict: one prediction per instance")

    status, raw = http("GET", f"{base}/metrics")
    text = raw.decode(errors="replace")
    for needle in ("ensemble_requests_total{", "ensemble_model_info{", f'model="{MODEL_NAME}"'):
        if status != 200 or needle not in text:
            raise StepFailed(f"/metrics (status {status}) lacks {needle!r}")
    log("/metrics: request counters and model info present")


def process_uid(container: str, env: dict[str, str]) -> int:
    """Real UID of the container's PID 1 (the server), read from /proc inside the container."""
    status = run(["podman", "exec", container, "cat", "/proc/1/status"], env, quiet=True).stdout
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise StepFailed("could not read the server's UID from /proc/1/status")


def serve_and_check(env: dict[str, str], repo: Repository) -> dict[str, float]:
    port = free_port()
    container = f"ensemble-image-test-{os.getpid()}"
    base = f"http://127.0.0.1:{port}"
    figures: dict[str, float] = {}
    start = time.monotonic()
    run(
        [
            "podman",
            "--runtime",
            "runc",
            "run",
            "--detach",
            "--name",
            container,
            *ULIMITS,
            # As Kubernetes' readOnlyRootFilesystem: only /tmp (a tmpfs here, an emptyDir there) is writable.
            "--read-only",
            "--publish",
            f"127.0.0.1:{port}:8000",
            "--volume",
            f"{repo.root}:/models:ro",
            "--env",
            "ENSEMBLE_DRAIN_TIMEOUT_S=10",
            IMAGE_TAG,
        ],
        env,
        quiet=True,
    )
    try:
        try:
            wait_ready(base, container, env)
            figures["start_to_ready_s"] = time.monotonic() - start
        except StepFailed:
            logs = run(["podman", "logs", container], env, check=False, quiet=True)
            tail = (logs.stdout + logs.stderr).strip().splitlines()[-30:]
            log("container log (last lines):\n" + "\n".join(tail))
            raise
        log(f"ready {figures['start_to_ready_s']:.1f} s after `podman run` on {base}")
        check_serving(base, repo)
        health = run(["podman", "healthcheck", "run", container], env, check=False, quiet=True)
        if health.returncode != 0:
            raise StepFailed(f"the image's HEALTHCHECK failed: {(health.stdout + health.stderr).strip()}")
        log("HEALTHCHECK command: healthy")
        # Tracing needs nothing but OTEL_EXPORTER_OTLP_ENDPOINT: the SDK and the exporter are in the image.
        otel = run(["podman", "exec", container, "python3", "-c", OTEL_INSIDE], env, check=False, quiet=True)
        if otel.returncode != 0:
            raise StepFailed(f"the image lacks the OpenTelemetry SDK or exporter: {otel.stderr[-300:]}")
        log("OpenTelemetry SDK and OTLP/HTTP exporter importable")
        uid = process_uid(container, env)
        if uid == 0:
            raise StepFailed("the server runs as root inside the container")
        log(f"server runs as UID {uid}")
        stop_start = time.monotonic()
        run(
            ["podman", "stop", "--time", str(STOP_TIMEOUT_S), container],
            env,
            timeout=STOP_TIMEOUT_S + 30,
            quiet=True,
        )
        figures["stop_s"] = time.monotonic() - stop_start
        code = run(["podman", "inspect", "--format", "{{.State.ExitCode}}", container], env, quiet=True)
        if code.stdout.strip() != "0":
            logs = run(["podman", "logs", "--tail", "20", container], env, check=False, quiet=True)
            raise StepFailed(
                f"after SIGTERM the server exited {code.stdout.strip()}, not 0 (137: a drain longer than"
                f" {STOP_TIMEOUT_S} s ended in SIGKILL; 143: the process re-raised SIGTERM, as uvicorn does"
                f" without a handler):\n{(logs.stdout + logs.stderr).strip()}"
            )
        log(f"podman stop: clean drain, exit code 0 in {figures['stop_s']:.1f} s")
    finally:
        run(["podman", "rm", "--force", container], env, check=False, quiet=True)
    return figures


def main() -> int:
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        print(
            f"image-test: {', '.join(missing)} not installed (apt-get install podman runc)", file=sys.stderr
        )
        return 2
    if not (ROOT / "server" / "cli.py").exists():
        log("warning: server/cli.py is absent, so the image will build but ensemble-serve cannot start")
    CACHE.mkdir(parents=True, exist_ok=True)
    step = "choosing podman storage"
    try:
        env = choose_storage()
        step = "building the base image"
        base_s = ensure_base_image(env)
        step = "building the serving image"
        build_s = build_image(env)
        size = run(["podman", "image", "inspect", "--format", "{{.Size}}", IMAGE_TAG], env, quiet=True)
        size_mb = int(size.stdout.strip()) / 1e6
        step = "writing the tiny model repository"
        models = CACHE / "models"
        shutil.rmtree(models, ignore_errors=True)
        repo = tiny_repository(models)
        # The server runs as UID 10001 and reads the mount: world-readable files and folders.
        for path in [models, *models.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        step = "serving from the container"
        figures = serve_and_check(env, repo)
    except StepFailed as err:
        print(f"image-test FAILED while {step}: {err}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as err:
        print(
            f"image-test FAILED while {step}: `{' '.join(map(str, err.cmd[:3]))}` timed out", file=sys.stderr
        )
        return 1
    base_text = "cached" if base_s is None else f"{base_s:.1f} s"
    print(
        f"image-test OK: base image build {base_text}; image build {build_s:.1f} s;"
        f" image size {size_mb:.0f} MB; start to ready {figures['start_to_ready_s']:.1f} s;"
        f" stop (drain) {figures['stop_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
