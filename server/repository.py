"""The model repository: scan the folder, validate versions, load them, and keep the registry of what serves.

``ModelRegistry`` holds an immutable dict ``(name, version) -> ServedVersion`` that is swapped atomically, so
a request always sees a consistent set, and each name's state; ``reload()`` / ``load(name)`` /
``unload(name)`` build the next dict and swap it in, retiring the versions that left once their in-flight
requests finish (``server.served``). Lookups answer None for what is not served: what that means to a
client (404 or 503) is the data plane's call.
``server.reloader`` calls ``reload()`` when the folder changed. A version that fails to load never takes the
place of a good one: under the ``latest`` policy the highest version that loads serves, and a failed version
is tried again only once its files change (so a broken folder is logged and counted once, not every poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from server.ensemble import Ensemble
from server.errors import ModelLoadError, Unavailable
from server.manifest import NAME_RE, Manifest, read_manifest, sha256_file
from server.metrics import Metrics
from server.runtime import default_intra_op_threads, usable_cpus
from server.served import ServedVersion
from server.settings import Settings, is_version

log = logging.getLogger(__name__)

Key = tuple[str, int]
State = Literal["loading", "ready", "unavailable", "unloaded"]


@dataclass
class ModelStatus:
    """What the server knows about one model name (ready or not, and why)."""

    name: str
    state: State = "loading"
    reason: str = ""
    versions: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # version -> why it did not load


@dataclass(eq=False)
class Staged:
    """A change loaded and warmed but not served yet: what ``commit`` swaps in (or ``abort`` drops).

    One process plans and commits at once; the workers of ``--workers N`` all stage a change first and
    commit it only once every one has (server.cluster), so a version is served everywhere or nowhere."""

    models: dict[Key, ServedVersion]  # the next served dict
    status: dict[str, ModelStatus]  # the next states
    base: dict[Key, ServedVersion]  # the served dict it was planned against
    scan: bool  # a whole-repository scan (the first one makes the registry `loaded_once`)

    def summary(self) -> tuple[Any, ...]:
        """What it would serve, comparable between processes: versions, manifest stamps, states."""
        served = tuple(sorted((key, sv.stamp) for key, sv in self.models.items()))
        states = tuple(sorted((n, st.state, tuple(sorted(st.failed))) for n, st in self.status.items()))
        return served, states


# A version folder's name follows the one version rule (settings.is_version): "1", "12"; not "01" or "¹".
is_version_folder = is_version


def scan(root: Path) -> dict[str, list[int]]:
    """Model names and their versions on disk; folders with invalid names are skipped with a warning."""
    found: dict[str, list[int]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not NAME_RE.match(model_dir.name):
            log.warning("skipping %s: model names must match [a-z0-9_-]{1,64}", model_dir.name)
            continue
        versions = []
        for v in model_dir.iterdir():
            if not v.is_dir() or not (v.name.isascii() and v.name.isdigit()):
                continue  # notes, staging folders, ... (digits only but not a version: warned below)
            if is_version_folder(v.name):
                versions.append(int(v.name))
            else:
                log.warning(
                    "skipping %s/%s: versions are written 1, 2, ... (no leading zeros)",
                    model_dir.name,
                    v.name,
                )
        found[model_dir.name] = sorted(versions)
    return found


def version_fingerprint(vdir: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, size and mtime (ns) of each file directly in a version folder; empty if the folder is gone."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(vdir):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file():
                    st = entry.stat()
                    out.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


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
    """The name -> versions map, its swaps and its states."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics  # load failures; the served versions' own series (server.served)
        self.root = Path(settings.model_repository)
        self.models: dict[Key, ServedVersion] = {}  # swapped whole, never mutated
        self.status: dict[str, ModelStatus] = {}
        self.loaded_once = False  # the first scan finished (readiness needs it)
        self._lock = asyncio.Lock()
        # Versions that failed, with their files' fingerprint then: not retried until the files change.
        self._failed: dict[Key, tuple[tuple[tuple[str, int, int], ...], str]] = {}
        cpus = usable_cpus()
        self.intra_op_threads = settings.intra_op_threads or default_intra_op_threads(cpus)
        self.cpus = cpus

    # ------------------------------------------------------------ lookups (event loop, no I/O)
    def get(self, name: str, version: int | None = None) -> ServedVersion | None:
        """The version to serve: the one asked for, or the highest loaded one; None when not served."""
        models = self.models  # one read of the current dict: consistent even during a swap
        if version is not None:
            return models.get((name, version))
        versions = [v for (n, v) in models if n == name]
        return models[(name, max(versions))] if versions else None

    def is_ready(self) -> bool:
        """Every model that should load is loaded and warmed."""
        return self.loaded_once and all(s.state in ("ready", "unloaded") for s in self.status.values())

    def versions_of(self, name: str) -> list[int]:
        return sorted(v for (n, v) in self.models if n == name)

    # ------------------------------------------------------------ loading (heavy work in a thread)
    def _load_version(self, name: str, version: int) -> ServedVersion:
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
        return ServedVersion(name, version, vdir, manifest, ensemble, stamp)

    def _candidates(self, on_disk: list[int]) -> tuple[list[int], bool]:
        """Versions to try, and whether the first that loads is enough (``latest``: highest first)."""
        policy = self.settings.version_policy
        if policy.kind == "latest":
            return sorted(on_disk, reverse=True), True
        return policy.select(on_disk), False

    async def _load_model(
        self, name: str, on_disk: list[int], current: dict[Key, ServedVersion], st: ModelStatus
    ) -> dict[Key, ServedVersion]:
        """Load the versions of `name` to serve (reusing unchanged loaded ones); updates `st`."""
        candidates, first_only = self._candidates(on_disk)
        out: dict[Key, ServedVersion] = {}
        failed: dict[int, str] = {}
        for v in candidates:
            lm = await self._load_or_reuse(st, name, v, current, failed)
            if lm is not None:
                out[(name, v)] = lm
                if first_only:
                    break
        for key in [k for k in self._failed if k[0] == name and k[1] not in on_disk]:
            del self._failed[key]  # folder gone: forget it
        st.failed = failed
        st.versions = sorted({*(v for _, v in out), *failed})
        notes = "; ".join(f"version {v}: {why}" for v, why in sorted(failed.items()))
        if out:  # serving something: ready, with a note about any version that did not load
            st.state, st.reason = "ready", notes
        else:
            st.state = "unavailable"
            st.reason = notes or "no version folder matches the version policy"
        return out

    async def _load_or_reuse(
        self, st: ModelStatus, name: str, v: int, current: dict[Key, ServedVersion], failed: dict[int, str]
    ) -> ServedVersion | None:
        vdir = self.root / name / str(v)
        old = current.get((name, v))
        mf = vdir / "manifest.json"
        if old is not None and mf.is_file() and mf.stat().st_mtime == old.stamp:
            return old
        fingerprint = await asyncio.to_thread(version_fingerprint, vdir)
        known = self._failed.get((name, v))
        # A version changed in place into something broken keeps serving from memory (`old`).
        if known is not None and known[0] == fingerprint:
            failed[v] = known[1]  # unchanged since it failed: do not load (or count) it again
            return old
        if old is None and st.state != "ready":
            st.state = "loading"
        try:
            lm = await asyncio.to_thread(self._load_version, name, v)
        except ModelLoadError as exc:
            log.error("cannot load %s version %d: %s", name, v, exc)
            self.metrics.load_failures.labels(name).inc()
            self._failed[(name, v)] = (fingerprint, str(exc))
            failed[v] = str(exc)
            return old
        self._failed.pop((name, v), None)
        return lm

    async def _swap(self, new: dict[Key, ServedVersion], retire_timeout_s: float | None = None) -> None:
        old = self.models
        for sv in new.values():
            sv.start(self.settings, self.metrics)
        self.models = new  # the atomic swap: readers see the old dict or the new one
        # Retire together: one slow request holds the swap for at most one timeout, not one per version.
        timeout_s = self.settings.request_timeout_s if retire_timeout_s is None else retire_timeout_s
        served_info = {sv.info_labels for sv in new.values()}
        retired = [sv for key, sv in old.items() if new.get(key) is not sv]
        await asyncio.gather(
            *(sv.retire(timeout_s, self.metrics, keep_info=sv.info_labels in served_info) for sv in retired)
        )

    async def reload(self) -> None:
        """Rescan the whole repository and load what changed (the first call loads everything)."""
        async with self._lock:
            await self._commit(await self._plan_reload())

    async def load(self, name: str) -> None:
        """(Re)load one model by name (its folder exists: the data plane checks)."""
        async with self._lock:
            await self._commit(await self._plan_load(name))

    # Two phases: plan (load and warm, serve nothing new) then commit (swap), or abort.
    async def _plan_reload(self) -> Staged:
        on_disk = await asyncio.to_thread(scan, self.root)
        for name in on_disk:  # a new name is loading from now on (readiness says so)
            self.status.setdefault(name, ModelStatus(name))
        # Copies: the served states change only when the plan is committed.
        status = {name: replace(st) for name, st in self.status.items() if name in on_disk}
        current = self.models
        new: dict[Key, ServedVersion] = {}
        for name, versions in on_disk.items():
            if status[name].state == "unloaded":
                continue
            new.update(await self._load_model(name, versions, current, status[name]))
        return Staged(new, status, current, scan=True)

    async def _plan_load(self, name: str) -> Staged:
        on_disk = await asyncio.to_thread(scan, self.root)
        st = replace(self.status[name], state="loading") if name in self.status else ModelStatus(name)
        for key in [k for k in self._failed if k[0] == name]:
            del self._failed[key]  # an explicit load tries every version again
        current = self.models
        loaded = await self._load_model(name, on_disk.get(name, []), current, st)
        new = {k: v for k, v in current.items() if k[0] != name}
        new.update(loaded)
        return Staged(new, {**self.status, name: st}, current, scan=False)

    async def _commit(self, staged: Staged) -> None:
        if self.models is not staged.base:  # cannot happen while one caller at a time plans and commits
            raise Unavailable("The served models changed while a change was staged; try again.")
        self.status = staged.status
        await self._swap(staged.models)
        if staged.scan:
            self.loaded_once = True

    async def stage(self, kind: str, *args: str) -> Staged:
        """Phase one of a cluster-wide change: ``reload`` or ``load <name>``, loaded but not served."""
        async with self._lock:
            return await (self._plan_reload() if kind == "reload" else self._plan_load(*args))

    async def commit(self, staged: Staged) -> None:
        async with self._lock:
            await self._commit(staged)

    def abort(self, staged: Staged) -> None:
        """Drop a staged change: close the sessions it loaded (never served, so nothing waits on them)."""
        serving = {id(sv) for sv in self.models.values()}
        for sv in staged.models.values():
            if id(sv) not in serving and sv.batcher is None:
                sv.ensemble.close()

    async def unload(self, name: str) -> None:
        """Stop serving a model (one the registry knows); in-flight requests finish first."""
        async with self._lock:
            self.status[name].state, self.status[name].reason = "unloaded", "unloaded by request"
            await self._swap({k: v for k, v in self.models.items() if k[0] != name})

    async def close(self, timeout_s: float | None = None) -> None:
        """Unload everything; each version's requests get up to `timeout_s` (default: the request timeout)."""
        async with self._lock:
            await self._swap({}, timeout_s)
