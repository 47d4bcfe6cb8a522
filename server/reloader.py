"""Hot reload: poll the model repository and reload it once a change has held still for one poll.

Only what the registry reads counts: ``<model>/<digits>/`` folders and the files directly in them (name, size,
mtime). Dot-folders (the training writer's ``.tmp-*`` staging folders) and other names are ignored, so a
version written the safe way (complete folder renamed into place) is picked up on the next poll but one. A
version copied by hand keeps changing while the copy runs; it is loaded only after two polls see the same
files. Should a copy stall longer than that, the half version fails its checks (missing member, sha256),
is counted and logged, and is tried again as soon as its files change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from server.repository import ModelRegistry, is_version_folder, version_fingerprint

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, tuple[tuple[str, int, int], ...]], ...]


def repository_fingerprint(root: Path) -> Fingerprint:
    """Every ``(model, version, files)`` under `root`; raises OSError when `root` cannot be read."""
    out = []
    for model_dir in sorted(root.iterdir()):
        if model_dir.name.startswith(".") or not model_dir.is_dir():
            continue
        try:
            versions = [v for v in model_dir.iterdir() if is_version_folder(v.name) and v.is_dir()]
        except FileNotFoundError:  # removed while we looked: it is simply gone
            continue
        out.extend((model_dir.name, int(v.name), version_fingerprint(v)) for v in versions)
    return tuple(sorted(out))


class RepositoryPoller:
    """Calls ``registry.reload()`` when the repository changed and then looked the same on the next poll."""

    def __init__(
        self, registry: ModelRegistry, interval_s: float, paused: Callable[[], bool] = lambda: False
    ) -> None:
        self.registry, self.interval_s, self.paused = registry, interval_s, paused
        self._loaded: Fingerprint | None = None  # what the last reload saw
        self._seen: Fingerprint | None = None  # what the last poll saw
        self._last_error = ""

    def baseline(self) -> None:
        """Take the fingerprint that the coming first load will see (call it just before that load)."""
        try:
            self._loaded = self._seen = repository_fingerprint(self.registry.root)
        except OSError:
            self._loaded = self._seen = None

    async def poll_once(self) -> bool:
        """One poll; True when it reloaded."""
        fp = await asyncio.to_thread(repository_fingerprint, self.registry.root)
        if fp == self._loaded or fp != self._seen:
            self._seen = fp  # unchanged, or still changing: look again next time
            return False
        log.info("model repository changed: reloading")
        await self.registry.reload()
        self._loaded = fp  # only now: a reload that raised is tried again on the next poll
        return True

    async def run(self) -> None:
        """Poll until cancelled; errors are logged (once per distinct message) and polling goes on."""
        while True:
            await asyncio.sleep(self.interval_s)
            if self.paused():
                continue
            try:
                await self.poll_once()
                self._last_error = ""
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                if message != self._last_error:
                    log.error("polling the model repository failed: %s", message)
                self._last_error = message
