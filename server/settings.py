"""Server settings: one pydantic-settings class, environment prefix ``ENSEMBLE_``.

Every default serves a laptop; every limit is a setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Device = Literal["auto", "cuda", "tensorrt", "cpu"]
MemberExecution = Literal["auto", "sequential", "fused", "parallel"]


# At most 18 digits: every such number fits an INT64 (Triton's version type), and a longer string is never
# handed to ``int`` (beyond 4,300 digits Python refuses to convert it: a ValueError, not a version).
MAX_VERSION_DIGITS = 18


def is_version(text: str) -> bool:
    """THE version rule (folders, URLs, policies): a positive integer written plainly: "1", "12";
    not "01", "0", "+1" or "¹" (which ``str.isdigit`` takes and ``int`` refuses), nor longer than
    MAX_VERSION_DIGITS digits."""
    return len(text) <= MAX_VERSION_DIGITS and text.isascii() and text.isdigit() and not text.startswith("0")


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions of a model serve (Triton's ``latest``, ``all`` and ``specific`` policies)."""

    kind: Literal["latest", "all", "specific"] = "latest"
    versions: tuple[int, ...] = ()  # ``specific`` only: sorted, distinct

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """``latest``, ``all`` or a comma-separated list such as ``1,3``; ValueError otherwise."""
        value = text.strip().lower()
        if value in ("latest", "all"):
            return cls(value)  # type: ignore[arg-type]
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts or not all(is_version(p) for p in parts):
            raise ValueError("version_policy must be 'latest', 'all' or a comma-separated list of versions")
        return cls("specific", tuple(sorted({int(p) for p in parts})))

    def select(self, available: list[int]) -> list[int]:
        """The versions of `available` this policy serves, in ascending order."""
        if not available:
            return []
        if self.kind == "latest":
            return [max(available)]
        if self.kind == "all":
            return sorted(available)
        return sorted(v for v in available if v in self.versions)

    def __str__(self) -> str:
        return ",".join(map(str, self.versions)) if self.kind == "specific" else self.kind


LATEST = VersionPolicy()


def _policy(value: Any) -> Any:
    return VersionPolicy.parse(value) if isinstance(value, str) else value


# NoDecode: the environment variable is the policy's text, not JSON.
PolicySetting = Annotated[
    VersionPolicy,
    NoDecode,
    BeforeValidator(_policy),
    PlainSerializer(str),
    WithJsonSchema({"type": "string"}),
]


# ---- worker processes (server.workers)
def _workers(value: Any) -> Any:
    """``auto``, or a positive whole number (a flag or an environment variable arrives as text)."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text.isascii() and text.isdigit() and int(text) >= 1 and not isinstance(value, bool | float):
        return int(text)
    raise ValueError("workers must be a positive whole number or 'auto'")


WorkersSetting = Annotated[int | Literal["auto"], BeforeValidator(_workers)]
# ----


class Settings(BaseSettings):
    """Everything the server can be told; read from ``ENSEMBLE_*`` environment variables and CLI flags."""

    # The docstring under each field becomes its description (shown in the JSON schema and --help texts).
    model_config = SettingsConfigDict(env_prefix="ENSEMBLE_", extra="ignore", use_attribute_docstrings=True)

    model_repository: Path = Path("model_repository")
    """Folder holding ``<model>/<version>/manifest.json`` and the member ONNX files."""

    host: str = "127.0.0.1"
    """Interface to listen on (loopback by default: expose on purpose)."""

    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port to listen on."""

    # ---- gRPC transport (server/grpc) ----
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """Port of the gRPC transport (Triton's GRPCInferenceService and grpc.health.v1); 0 turns gRPC off."""

    device: Device = "auto"
    """Execution device: ``auto`` picks TensorRT -> CUDA -> CPU from what really loads."""

    gpu_device_id: int = Field(default=0, ge=0)
    """Which GPU the CUDA / TensorRT providers use."""

    version_policy: PolicySetting = LATEST
    """Versions to serve: ``latest`` (the highest), ``all``, or a comma-separated list such as ``1,3``."""

    max_batch_size: int = Field(default=256, ge=1)
    """Most rows the dynamic batcher merges into one run."""

    max_queue_delay_ms: float = Field(default=0.5, ge=0)
    """How long a batch may wait for more requests; a lone request on an idle model runs at once
    (docs/performance.md has the measurements behind the default)."""

    max_queue_size: int = Field(default=65_536, ge=1)
    """A safety cap on the rows waiting in one model version's queue (beyond it: 429), bounding memory
    (rows x features x 4 bytes: 16 MiB for 64 features). Admission is decided by time (a request is
    refused when the rows ahead of it cannot finish before its deadline at the measured rate), so the cap
    sits well above what that lets queue under load: 64 clients x 256 rows is 16,384 rows."""

    priority_levels: int = Field(default=3, ge=1, le=16)
    """Priority levels of the batch queue (Triton's ``priority``: 1 is served first, higher numbers later;
    a request's ``priority`` parameter 0 or absent means ``default_priority_level``)."""

    default_priority_level: int = Field(default=2, ge=1)
    """The level of a request that names no priority: the middle one by default, so that a client can ask to
    go ahead of ordinary traffic (1) or behind it (3) without any configuration."""

    inline_max_rows: int = Field(default=16, ge=0)
    """A request of at most this many rows that finds its model idle runs on the event loop itself, not on
    the inference thread (saving the hop there and back); 0: never (docs/performance.md has the figures)."""

    max_request_rows: int = Field(default=4096, ge=1)
    """Most rows in one request; a request over ``max_batch_size`` (and under this) runs as a batch alone."""

    request_timeout_s: float = Field(default=30.0, gt=0)
    """A request still unanswered after this many seconds gets 504 (its rows are dropped if still queued)."""

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    """Largest request body accepted; larger ones get 413 and the connection is closed."""

    allow_nonfinite: bool = False
    """Accept NaN and infinities in the input features (refused with 400 by default)."""

    intra_op_threads: int | None = Field(default=None, ge=1)
    """onnxruntime intra-op threads per session; unset: sized from the CPUs this process may use."""

    member_execution: MemberExecution = "auto"
    """How the members run: one session each in turn, one fused graph, or a thread pool; auto measures."""

    warmup_runs: int = Field(default=3, ge=0)
    """Warm-up runs per session at batch 1 and at ``max_batch_size`` before a model reports ready."""

    repository_poll_interval_s: float = Field(default=2.0, ge=0)
    """Seconds between scans of the repository for new, changed or removed versions (hot reload); 0: off.
    A change loads once the folder looked the same on two polls in a row (no half-copied versions)."""

    drain_timeout_s: float = Field(default=30.0, gt=0)
    """On SIGTERM: readiness turns false, new requests get 503, and the requests already accepted get this
    many seconds to finish before the process exits (0 on a clean drain)."""

    # ---- worker processes (server.workers)
    workers: WorkersSetting = 1
    """Full server processes on one port (each with its own sessions and batcher) under a supervising
    parent; ``auto``: one per CPU this process may use (affinity and cgroup quota). 1: one process, no
    parent (docs/operations.md says how to size it)."""
    # ----

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the server and uvicorn."""

    # ---- observability (server/observability.py; tracing is configured by the standard OTEL_* variables)
    log_format: Literal["text", "json"] = "text"
    """The server's own logs on stderr: ``text`` lines, or one JSON object per line for log collectors."""

    request_log: Literal["off", "sampled", "full"] = "off"
    """One JSON line per inference request on stdout (ids, model, status, rows, times; never the payload):
    ``full`` every request, ``sampled`` a ``request_log_sample_rate`` share of the successful ones and every
    failed one."""

    request_log_sample_rate: float = Field(default=0.01, ge=0, le=1)
    """Share of the successful requests that ``request_log=sampled`` writes (failures are always written)."""
    # ---- end of observability

    admin_token: str | None = None
    """Bearer token for the repository admin endpoints; unset: those endpoints answer 404."""

    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS; empty: no CORS headers."""

    # ------------------------------------------------ connection level (server.http.connections)
    # Below the application: slow and oversized clients must not exhaust time, memory or descriptors.

    header_timeout_s: float = Field(default=10.0, gt=0)
    """A connection must send its complete request line and headers within this many seconds of
    connecting (on a kept-alive connection: of its next request's first byte); else 408 and close."""

    max_header_line_bytes: int = Field(default=16 * 1024, ge=256)
    """Longest request line (else 414) or single header line (else 431), as nginx's
    ``large_client_header_buffers``."""

    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    """Most bytes of URL, header names and values together; beyond: 431, refused while they arrive."""

    max_headers: int = Field(default=100, ge=1)
    """Most header lines in one request; beyond: 431."""

    max_connections: int | None = Field(default=None, ge=2)
    """Connections one process holds at most; beyond: 503 at once (never a reset). Unset: the open-file
    limit less an eighth of it (at least 64) for the server's own files, at most 16,384 (896 for 1024)."""

    reserved_connections: int = Field(default=32, ge=0)
    """The top of the connection cap kept for health and readiness probes, ``/metrics`` and the admin
    routes: above ``max_connections - reserved_connections`` other requests get 503, and a new connection
    first closes the one that has waited longest for its headers."""

    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    """An idle kept-alive connection closes after this many seconds (uvicorn's ``timeout_keep_alive``);
    behind a load balancer, set it above the balancer's own idle timeout."""

    @model_validator(mode="after")
    def _default_level_exists(self) -> Settings:
        if self.default_priority_level > self.priority_levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} is not one of the "
                f"{self.priority_levels} priority levels"
            )
        return self
