"""The model repository: scan the folder, validate versions, load them, and keep the registry of what serves.

``ModelRegistry`` holds an immutable dict ``(name, version) -> LoadedModel`` that is swapped atomically, so a
request always sees a consistent set; ``reload()`` / ``load(name)`` / ``unload(name)`` build the next dict
and swap it in, closing the batchers of versions that left only after their in-flight requests finish.
Hot reload by polling can call ``reload()`` on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from server.batching import Batcher
from server.ensemble import Ensemble
from server.errors import ModelLoadError, NotFound, Unavailable
from server.manifest import NAME_RE, Manifest, read_manifest, sha256_file
from server.metrics import Metrics
from server.runtime import default_intra_op_threads, usable_cpus
from server.settings import Settings

log = logging.getLogger(__name__)

Key = tuple[str, int]


@dataclass(eq=False)
class LoadedModel:
    name: str
    version: int
    path: Path
    manifest: Manifest
    ensemble: Ensemble
    stamp: float  # manifest mtime when loaded: a changed manifest means a new load
    batcher: Batcher | None = None


@dataclass
class ModelStatus:
    """What the server knows about one model name (ready or not, and why)."""

    name: str
    state: str = "loading"  # loading | ready | unavailable | unloaded
    reason: str = ""
    versions: list[int] = field(default_factory=list)


def scan(root: Path) -> dict[str, list[int]]:
    """Model names and their versions on disk; folders with invalid names are skipped with a warning."""
    found: dict[str, list[int]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not NAME_RE.match(model_dir.name):
            log.warning("skipping %s: model names must match [a-z0-9_-]{1,64}", model_dir.name)
            continue
        versions = sorted(
            int(v.name) for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit() and int(v.name) >= 1
        )
        found[model_dir.name] = versions
    return found


def select_versions(available: list[int], policy: str) -> list[int]:
    """Versions to serve under `policy` (``latest``, ``all`` or ``1,3``)."""
    if not available:
        return []
    if policy == "latest":
        return [max(available)]
    if policy == "all":
        return list(available)
    wanted = {int(p) for p in policy.split(",")}
    return [v for v in available if v in wanted]


def validate_version(version_dir: Path, name: str, version: int) -> Manifest:
    """Read the manifest and check it against the folder and every member file's checksum."""
    try:
        manifest = read_manifest(version_dir)
    except FileNotFoundError:
        raise ModelLoadError("manifest.json is missing") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        # A body that is not JSON at all has no location.
        raise ModelLoadError(
            f"invalid manifest.json: {where + ': ' if where else ''}{first['msg']}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read manifest.json: {exc}") from None
    if manifest.name != name or manifest.version != version:
        raise ModelLoadError(f"manifest says {manifest.name}/{manifest.version} but sits in {name}/{version}")
    for member in manifest.members:
        # member.file matched MEMBER_FILE_PATTERN (no separators), so it cannot leave the version folder.
        path = version_dir / member.file
        if not path.is_file():
            raise ModelLoadError(f"member file {member.file} is missing")
        if sha256_file(path) != member.sha256:
            raise ModelLoadError(f"member file {member.file} does not match its sha256")
    return manifest


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root = Path(settings.model_repository)
        self.models: dict[Key, LoadedModel] = {}  # swapped whole, never mutated
        self.status: dict[str, ModelStatus] = {}
        self.loaded_once = False  # the first scan finished (readiness needs it)
        self._lock = asyncio.Lock()
        cpus = usable_cpus()
        self.intra_op_threads = settings.intra_op_threads or default_intra_op_threads(cpus)
        self.cpus = cpus

    # ------------------------------------------------------------ lookups (event loop, no I/O)
    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The model to serve: a given version, or the highest loaded one."""
        models = self.models  # one read of the current dict: consistent even during a swap
        if version is not None:
            found = models.get((name, version))
            if found is not None:
                return found
        else:
            versions = [v for (n, v) in models if n == name]
            if versions:
                return models[(name, max(versions))]
        st = self.status.get(name)
        if st is None:
            raise NotFound(f"Model '{name}' does not exist.")
        if version is not None and version not in st.versions:
            raise NotFound(f"Model '{name}' has no version {version}.")
        if st.state == "loading":
            raise Unavailable(f"Model '{name}' is still loading.", retry_after_s=1)
        if st.state == "unavailable":
            raise Unavailable(f"Model '{name}' is not available: {st.reason.rstrip('.')}.")
        raise Unavailable(f"Model '{name}' is not loaded.")

    def is_ready(self) -> bool:
        """Every model that should load is loaded and warmed."""
        return self.loaded_once and all(s.state in ("ready", "unloaded") for s in self.status.values())

    def versions_of(self, name: str) -> list[int]:
        return sorted(v for (n, v) in self.models if n == name)

    # ------------------------------------------------------------ loading (heavy work in a thread)
    def _load_version(self, name: str, version: int) -> LoadedModel:
        vdir = self.root / name / str(version)
        manifest = validate_version(vdir, name, version)
        s = self.settings
        try:
            ensemble = Ensemble(
                manifest,
                vdir,
                device=s.device,
                gpu_device_id=s.gpu_device_id,
                intra_op_threads=self.intra_op_threads,
                member_execution=s.member_execution,
                max_batch_size=s.max_batch_size,
                warmup_runs=s.warmup_runs,
            )
        except Exception as exc:  # onnxruntime's errors name the graph problem
            raise ModelLoadError(f"cannot run the members: {str(exc).splitlines()[0][:300]}") from None
        stamp = (vdir / "manifest.json").stat().st_mtime
        log.info(
            "loaded %s version %d: %d members, provider %s, execution %s, %d intra-op threads, warm-up %.2fs",
            name, version, ensemble.members, ensemble.info.provider, ensemble.execution,
            ensemble.info.intra_op_threads, ensemble.warmup_s,
        )  # fmt: skip
        return LoadedModel(name, version, vdir, manifest, ensemble, stamp)

    def _plan(self, name: str, on_disk: list[int]) -> list[int]:
        return select_versions(on_disk, self.settings.version_policy)

    async def _load_model(
        self, name: str, versions: list[int], current: dict[Key, LoadedModel]
    ) -> dict[Key, LoadedModel]:
        """Load `versions` of `name` (reusing unchanged loaded ones); updates its status."""
        st = self.status.setdefault(name, ModelStatus(name))
        st.versions = versions
        out: dict[Key, LoadedModel] = {}
        errors: list[str] = []
        if not versions:
            errors.append("no version folder matches the version policy")
        for v in versions:
            old = current.get((name, v))
            mf = self.root / name / str(v) / "manifest.json"
            if old is not None and mf.is_file() and mf.stat().st_mtime == old.stamp:
                out[(name, v)] = old
                continue
            if old is None and st.state != "ready":
                st.state = "loading"
            try:
                out[(name, v)] = await asyncio.to_thread(self._load_version, name, v)
            except ModelLoadError as exc:
                log.error("cannot load %s version %d: %s", name, v, exc)
                self.metrics.load_failures.labels(name).inc()
                errors.append(f"version {v}: {exc}")
        if errors:
            st.state, st.reason = "unavailable", "; ".join(errors)
        else:
            st.state, st.reason = "ready", ""
        return out

    async def _swap(self, new: dict[Key, LoadedModel]) -> None:
        old = self.models
        s = self.settings
        for key, lm in new.items():
            if lm.batcher is None:
                lm.batcher = Batcher(
                    lm.ensemble.predict,
                    max_batch_size=s.max_batch_size,
                    max_queue_delay_s=s.max_queue_delay_ms / 1000,
                    max_queue_rows=s.max_queue_size,
                    max_request_rows=s.max_request_rows,
                    metrics=self.metrics,
                    labels=(key[0], str(key[1])),
                )
                lm.batcher.start()
                e = lm.ensemble
                self.metrics.model_info.labels(
                    key[0], str(key[1]), e.info.provider, e.info.device, str(e.members), e.execution
                ).set(1)
        self.models = new  # the atomic swap: readers see the old dict or the new one
        for key, lm in old.items():
            if new.get(key) is not lm:
                await self._retire(lm)

    async def _retire(self, lm: LoadedModel) -> None:
        """Close a version that left the registry once its queued and running requests are done."""
        if lm.batcher is not None:
            await lm.batcher.close(self.settings.request_timeout_s)
        e = lm.ensemble
        with contextlib.suppress(KeyError):
            self.metrics.model_info.remove(
                lm.name, str(lm.version), e.info.provider, e.info.device, str(e.members), e.execution
            )
        e.close()

    async def reload(self) -> None:
        """Rescan the whole repository and load what changed (the first call loads everything)."""
        async with self._lock:
            on_disk = await asyncio.to_thread(scan, self.root)
            for name in on_disk:
                self.status.setdefault(name, ModelStatus(name))
            current = self.models
            new: dict[Key, LoadedModel] = {}
            for name, versions in on_disk.items():
                if self.status[name].state == "unloaded":
                    continue
                new.update(await self._load_model(name, self._plan(name, versions), current))
            for name in list(self.status):
                if name not in on_disk:
                    del self.status[name]
            await self._swap(new)
            self.loaded_once = True

    async def load(self, name: str) -> None:
        """(Re)load one model by name; NotFound when there is no such folder."""
        if not NAME_RE.match(name) or not (self.root / name).is_dir():
            raise NotFound(f"Model '{name}' is not in the repository.")
        async with self._lock:
            on_disk = await asyncio.to_thread(scan, self.root)
            self.status.setdefault(name, ModelStatus(name)).state = "loading"
            loaded = await self._load_model(name, self._plan(name, on_disk.get(name, [])), self.models)
            new = {k: v for k, v in self.models.items() if k[0] != name}
            new.update(loaded)
            await self._swap(new)

    async def unload(self, name: str) -> None:
        """Stop serving a model; in-flight requests finish first."""
        async with self._lock:
            if name not in self.status:
                raise NotFound(f"Model '{name}' does not exist.")
            self.status[name].state, self.status[name].reason = "unloaded", "unloaded by request"
            await self._swap({k: v for k, v in self.models.items() if k[0] != name})

    async def close(self) -> None:
        async with self._lock:
            await self._swap({})
