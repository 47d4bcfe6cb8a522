"""The data plane: every operation of the server, transport-free (knows nothing of HTTP or gRPC).

Transports are codecs and routing over this (``server.http``, V2 and V1; ``server.grpc``): they decode a
request into ``server.protocol.tensors`` types, call one method here, and encode what it returns. Errors are
``server.errors.ServerError`` subclasses (status 400/401/403/404/408/413/429/499/503/504) with one-sentence
messages; each transport maps them once (HTTP: the status and ``{"error": message}``; gRPC: its codes).

Every inference request's metrics (``ensemble_requests_total{protocol, outcome}``, duration, in-flight) and
Triton statistics are recorded in ONE place, :meth:`DataPlane.infer_with`, around the whole request: the
transport's decode (so a body that is too large, too slow or abandoned counts as 413 / 408 / 499), the
checks against the model, the batcher, and the transport's encode.

Changes to the interface in /work/notes/dataplane-interface.md (shapes kept):
- ``infer_with(name, version, decode, encode, protocol=..., deadline=...)`` added: ``infer`` for a
  transport whose request must still be read (HTTP reads the body inside the recorded region);
  ``infer(request, ...)`` is ``infer_with`` with a request already decoded (gRPC).
- ``lookup(name, version)`` is public: the served version, or NotFound / Unavailable (HTTP's model routes
  answer 404/503 from it).
- ``server.errors.ClientDisconnected`` (499): raise it from a decode when the client left.
- Draining is not the data plane's: ``services.drain`` (``server.lifecycle.DrainState``).
- The tensor types are ``@dataclass(slots=True)``, not ``frozen`` (same fields; immutable by convention):
  frozen construction cost measurably on the hot path (server/protocol/tensors.py).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import onnxruntime as ort

from server import __version__, triton_config
from server.errors import BadRequest, Forbidden, NotFound, ServerError, Unauthorized, Unavailable
from server.inputs import read_rows
from server.manifest import NAME_RE, Manifest
from server.metrics import Metrics
from server.observability import BatchTiming, Observer, RequestContext
from server.protocol.tensors import InferenceRequest, InferenceResponse, OutputTensor
from server.repository import ModelRegistry
from server.served import ServedVersion
from server.settings import Settings, is_version

if TYPE_CHECKING:
    from server.cluster import WorkerLink

Protocol = Literal["v1", "v2", "grpc"]
T = TypeVar("T")
# decode(manifest, timeout_s): the transport reads and decodes its request (raising ServerError subclasses).
Decode = Callable[[Manifest, float], Awaitable[InferenceRequest]]
# encode(manifest, request, response): the transport's answer (bytes, a message...).
Encode = Callable[[Manifest, InferenceRequest, InferenceResponse], T]

SERVER_NAME = "ensemble-serving"
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


def _as_response(
    manifest: Manifest, request: InferenceRequest, response: InferenceResponse
) -> InferenceResponse:
    return response


class DataPlane:
    """Inference, metadata, configuration, statistics, readiness and repository operations."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        metrics: Metrics,
        cluster: WorkerLink | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.settings, self.registry, self.metrics = settings, registry, metrics
        # A worker of `--workers N`: readiness and repository operations span every worker (server.cluster).
        self.cluster = cluster
        # server.observability: the request log and traces; None (and no cost) when both are off.
        self.observer = observer
        # Extensions really implemented; model_repository only when its (token-guarded) operations are on.
        self.extensions: list[str] = ["binary_tensor_data", "model_configuration", "statistics"]
        if settings.admin_token:
            self.extensions.append("model_repository")

    # ------------------------------------------------------------------------------------ lookups
    def lookup(self, name: str, version: str | None) -> ServedVersion:
        """The version to serve (`version` None or "": the highest loaded); NotFound / Unavailable."""
        if not NAME_RE.match(name):
            raise NotFound(f"Model '{name[:64]}' does not exist.")
        number = None
        if version:
            if not is_version(version):
                raise NotFound(f"Version '{version[:20]}' does not exist; versions are positive integers.")
            number = int(version)
        found = self.registry.get(name, number)
        if found is not None:
            return found
        st = self.registry.status.get(name)
        if st is None:
            raise NotFound(f"Model '{name}' does not exist.")
        if number is not None and number in st.failed:
            raise Unavailable(f"Version {number} of model '{name}' failed to load: {st.failed[number]}")
        if number is not None and number not in st.versions:
            raise NotFound(f"Model '{name}' has no version {number}.")
        if st.state == "loading":
            raise Unavailable(f"Model '{name}' is still loading.", retry_after_s=1)
        if st.state == "unavailable":
            raise Unavailable(f"Model '{name}' is not available: {st.reason.rstrip('.')}.")
        raise Unavailable(f"Model '{name}' is not loaded.")

    # ------------------------------------------------------------------------------------ inference
    async def infer(
        self,
        request: InferenceRequest,
        *,
        protocol: Protocol,
        deadline: float | None = None,
        context: RequestContext | None = None,
    ) -> InferenceResponse:
        """Run a decoded request (`deadline`: a ``time.perf_counter()`` value; None: the request timeout).
        `context`: the transport's request id, traceparent and peer, for the request log and traces."""

        async def given(manifest: Manifest, timeout_s: float) -> InferenceRequest:
            return request

        return await self.infer_with(
            request.model_name,
            request.model_version,
            given,
            _as_response,
            protocol=protocol,
            deadline=deadline,
            context=context,
        )

    async def infer_with(
        self,
        name: str,
        version: str | None,
        decode: Decode,
        encode: Encode[T],
        *,
        protocol: Protocol,
        deadline: float | None = None,
        context: RequestContext | None = None,
    ) -> T:
        """Look the version up, ``decode`` the request (given the time left), run it, ``encode`` the answer;
        records the request's metrics and statistics whatever happens (and, with an observer, its log line
        and spans; `context` is what the transport knows of the request: see server.observability)."""
        start = time.perf_counter()
        if deadline is None:
            deadline = start + self.settings.request_timeout_s
        observer = self.observer
        # ---- observability: a request for a model that is not served is logged too
        try:
            sv = self.lookup(name, version)
        except ServerError as exc:
            if observer is not None:
                observer.finish(context, protocol=protocol, model=name, version=version or None,
                                status=exc.status_code, start=start, error=exc.message)  # fmt: skip
            raise
        timing = BatchTiming() if observer is not None else None
        request: InferenceRequest | None = None
        x, error = None, None  # the rows, and what went wrong: for the observer
        # ---- end of observability
        sv.enter()  # no await since the lookup: a hot-reload swap waits for this before retiring sv
        m = sv.metrics
        assert m is not None and sv.batcher is not None  # started before it was published
        m.request_started()
        outcome = "ok"
        try:
            manifest = sv.manifest
            request = await decode(manifest, max(0.0, deadline - time.perf_counter()))
            x = read_rows(request, manifest, self.settings.allow_nonfinite, m)
            types = sv.output_types
            names = request.output_names(types)
            if request.parameters:
                deadline, level = self._scheduling(request.parameters, start, deadline)
            else:
                level = self.settings.default_priority_level - 1
            results = await sv.batcher.submit(x, deadline, timing, level)
            outputs = tuple([OutputTensor(out, types[out], (a := results[out]).shape, a) for out in names])
            response = InferenceResponse(sv.name, sv.version_label, request.id, outputs)
            return encode(manifest, request, response)
        except ServerError as exc:
            outcome, error = str(exc.status_code), exc.message
            raise
        except Exception as exc:
            outcome, error = "500", f"internal error ({type(exc).__name__})"
            raise
        finally:
            sv.leave()
            m.request_finished()
            m.requests(protocol, outcome).inc()
            elapsed = time.perf_counter() - start
            m.request_duration(protocol).observe(elapsed)
            self.metrics.stats.record_request(sv.name, sv.version_label, outcome == "ok", elapsed)
            if observer is not None:  # ---- observability: one log line and the spans of this request
                observer.finish(context, protocol=protocol, model=sv.name, version=sv.version_label,
                                request_id=request.id if request is not None else None,
                                status=200 if outcome == "ok" else int(outcome),
                                rows=len(x) if x is not None else None, start=start, batch=timing,
                                error=error)  # fmt: skip

    def _scheduling(self, parameters: Mapping[str, Any], start: float, deadline: float) -> tuple[float, int]:
        """The request's deadline and batch-queue level (0 first) from its ``timeout`` and ``priority``.

        Triton's semantics: ``timeout`` is in microseconds and only shortens the server's own deadline
        (0: none of its own); ``priority`` 1 is served first, higher numbers later, 0 is the default
        level. Both are unsigned integers; anything else is a 400."""
        timeout = parameters.get("timeout")
        if timeout is not None:
            if type(timeout) is not int or timeout < 0:
                raise BadRequest("The request parameter 'timeout' must be a whole number of microseconds.")
            if timeout:
                deadline = min(deadline, start + timeout / 1e6)
        levels, priority = self.settings.priority_levels, parameters.get("priority", 0)
        if type(priority) is not int or not 0 <= priority <= levels:
            raise BadRequest(
                f"The request parameter 'priority' must be 0 (the default level) or a level from 1 (first) "
                f"to {levels}."
            )
        return deadline, (priority or self.settings.default_priority_level) - 1

    # ------------------------------------------------------------------------------------ health
    def server_live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        """Every model that should load is loaded and warmed (draining is the transports' to add)."""
        return self.registry.is_ready() and (self.cluster is None or self.cluster.all_ready())

    def readiness(self) -> dict[str, Any]:
        """``{"ready": True}``, or why not: still loading, and each model not ready with its reason."""
        registry = self.registry
        if registry.is_ready():
            if self.cluster is not None and not self.cluster.all_ready():
                return {"ready": False, "loading": False, "models": {}, **self.cluster.readiness()}
            return {"ready": True}
        # The models that keep it from being ready (as is_ready counts them: unloaded on purpose is not one).
        not_ready = {
            n: s.reason or s.state for n, s in registry.status.items() if s.state not in ("ready", "unloaded")
        }
        return {"ready": False, "loading": not registry.loaded_once, "models": not_ready}

    def model_ready(self, name: str, version: str | None) -> bool:
        """Whether the model (version) serves; NotFound for a model or version that does not exist."""
        try:
            self.lookup(name, version)
        except Unavailable:
            return False
        return True

    # ------------------------------------------------------------------------------------ metadata
    def server_metadata(self) -> dict[str, Any]:
        providers = sorted({sv.ensemble.info.provider for sv in self.registry.models.values()})
        return {
            "name": SERVER_NAME,
            "version": __version__,
            "extensions": self.extensions,
            "available_providers": ort.get_available_providers(),
            "providers": providers,
        }

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """V2 model metadata (the same tensors as the config) plus where and how the version runs."""
        sv = self.lookup(name, version)
        e, manifest = sv.ensemble, sv.manifest
        return {
            **triton_config.model_metadata(manifest, self.registry.versions_of(sv.name)),
            "parameters": {
                "task": manifest.task,
                "labels": manifest.labels,
                "provider": e.info.provider,
                "device": e.info.device,
                "members": e.members,
                "member_execution": e.execution,
                "max_batch_size": self.settings.max_batch_size,
            },
        }

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """Triton's model configuration with the settings and the provider that really run."""
        sv = self.lookup(name, version)
        s, e = self.settings, sv.ensemble
        return triton_config.model_config(
            sv.manifest,
            max_batch_size=s.max_batch_size,
            max_queue_delay_us=round(s.max_queue_delay_ms * 1000),
            instance_kind="KIND_GPU" if e.info.provider in GPU_PROVIDERS else "KIND_CPU",
            gpu_device_id=s.gpu_device_id,
            version_policy=s.version_policy,
            priority_levels=s.priority_levels,
            default_priority_level=s.default_priority_level,
            parameters={
                "provider": e.info.provider,
                "device": e.info.device,
                "member_execution": e.execution,
            },
        )

    def statistics(self, name: str | None, version: str | None) -> dict[str, Any]:
        """Triton's statistics extension: every served version, a model's, or one version's."""
        if name is None:
            chosen = list(self.registry.models.values())
        elif version:
            chosen = [self.lookup(name, version)]
        else:
            self.lookup(name, None)  # 404 / 503 as for any other model operation
            chosen = [sv for sv in self.registry.models.values() if sv.name == name]
        ordered = sorted(chosen, key=lambda sv: (sv.name, sv.version))
        return {"model_stats": [self.metrics.stats.model_stats(sv.name, str(sv.version)) for sv in ordered]}

    # ------------------------------------------------------------------------------------ repository
    def check_admin(self, authorization: str | None) -> None:
        """`authorization`: the ``Authorization`` header (or gRPC metadata) value, ``Bearer <token>``.
        NotFound when no admin token is configured (the operations do not exist), else 401 / 403."""
        token = self.settings.admin_token
        if not token:
            raise NotFound("Not found.")
        auth = authorization or ""
        if not auth.lower().startswith("bearer "):
            raise Unauthorized()
        if not hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            raise Forbidden("The bearer token is not valid.")

    async def repository_index(self) -> list[dict[str, Any]]:
        """Every model and version the repository knows, with its state (and why, when not ready)."""
        registry = self.registry
        rows = []
        for name, st in sorted(registry.status.items()):
            for v in st.versions or [None]:
                state = "UNAVAILABLE" if v in st.failed else st.state.upper()
                row: dict[str, Any] = {
                    "name": name,
                    "state": "READY" if (name, v) in registry.models else state,
                }
                if v is not None:
                    row["version"] = str(v)
                if st.reason:
                    row["reason"] = st.reason
                rows.append(row)
        return rows

    async def load_model(self, name: str) -> None:
        """(Re)load a model from the repository; NotFound without its folder, 400 when it fails to load."""
        if not NAME_RE.match(name) or not (self.registry.root / name).is_dir():
            raise NotFound(f"Model '{name[:64]}' is not in the repository.")
        if self.cluster is not None:
            await self.cluster.call("load", name)  # every worker loads it, then all serve it (or none)
        else:
            await self.registry.load(name)
        st = self.registry.status[name]
        if st.state != "ready":
            raise BadRequest(f"Model '{name}' failed to load: {st.reason}")

    async def unload_model(self, name: str) -> None:
        """Stop serving a model; its in-flight requests finish first."""
        if name not in self.registry.status:
            raise NotFound(f"Model '{name[:64]}' does not exist.")
        if self.cluster is not None:
            await self.cluster.call("unload", name)
        else:
            await self.registry.unload(name)
