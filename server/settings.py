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


def is_version(text: str) -> bool:
    """THE version rule (folders, URLs, policies): a positive integer written plainly: "1", "12";
    not "01", "0", "+1" or "¹" (which ``str.isdigit`` takes and ``int`` refuses)."""
    return text.isascii() and text.isdigit() and not text.startswith("0")


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

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the server and uvicorn."""

    admin_token: str | None = None
    """Bearer token for the repository admin endpoints; unset: those endpoints answer 404."""

    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS; empty: no CORS headers."""

    @model_validator(mode="after")
    def _default_level_exists(self) -> Settings:
        if self.default_priority_level > self.priority_levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} is not one of the "
                f"{self.priority_levels} priority levels"
            )
        return self
