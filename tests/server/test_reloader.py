"""Hot reload in process: what counts as a change, when a poll reloads, how broken versions stay out."""

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from server.dataplane import DataPlane
from server.metrics import Metrics
from server.reloader import RepositoryPoller, repository_fingerprint
from server.repository import ModelRegistry
from server.settings import Settings
from testing.repositories import corrupt_manifest, write_version


def test_fingerprint_sees_versions_and_ignores_staging_folders(tmp_path: Path) -> None:
    write_version(tmp_path, "iris", 1, seed=1)
    before = repository_fingerprint(tmp_path)
    assert [(m, v) for m, v, _ in before] == [("iris", 1)]
    (tmp_path / "iris" / ".tmp-abc").mkdir()  # the training writer's staging folder
    (tmp_path / "iris" / ".tmp-abc" / "manifest.json").write_text("{}")
    (tmp_path / ".hidden" / "1").mkdir(parents=True)
    (tmp_path / "iris" / "notes").mkdir()
    assert repository_fingerprint(tmp_path) == before
    (tmp_path / "iris" / "1" / "member-0.onnx").write_bytes(b"changed")
    assert repository_fingerprint(tmp_path) != before


class _CountingRegistry:
    def __init__(self, root: Path) -> None:
        self.root, self.reloads = root, 0

    async def reload(self) -> None:
        self.reloads += 1


def test_poller_reloads_only_after_the_folder_held_still_for_one_poll(tmp_path: Path) -> None:
    write_version(tmp_path, "iris", 1, seed=1)
    registry = _CountingRegistry(tmp_path)
    poller = RepositoryPoller(registry, 0.1)  # type: ignore[arg-type]
    poller.baseline()

    async def scenario() -> list[bool]:
        steps = [await poller.poll_once()]  # nothing changed
        (tmp_path / "iris" / "2").mkdir()
        (tmp_path / "iris" / "2" / "member-0.onnx").write_bytes(b"half")  # a copy by hand, under way
        steps.append(await poller.poll_once())  # changed since the last poll: wait
        (tmp_path / "iris" / "2" / "member-1.onnx").write_bytes(b"more")
        steps.append(await poller.poll_once())  # still changing: wait
        steps.append(await poller.poll_once())  # held still: reload
        steps.append(await poller.poll_once())  # nothing new
        return steps

    assert asyncio.run(scenario()) == [False, False, False, True, False]
    assert registry.reloads == 1


def _registry(root: Path) -> tuple[ModelRegistry, Metrics]:
    metrics = Metrics()
    return ModelRegistry(Settings(model_repository=root, warmup_runs=0, max_batch_size=4), metrics), metrics


def _failures(metrics: Metrics, model: str) -> float:
    return metrics.registry.get_sample_value("ensemble_model_load_failures_total", {"model": model}) or 0.0


def test_a_broken_newest_version_leaves_the_previous_one_serving(tmp_path: Path) -> None:
    write_version(tmp_path, "iris", 1, seed=1)
    registry, metrics = _registry(tmp_path)

    async def scenario() -> None:
        await registry.reload()
        assert registry.get("iris").version == 1
        write_version(tmp_path, "iris", 2, seed=2)
        corrupt_manifest(tmp_path, "iris", 2)
        await registry.reload()
        await registry.reload()  # unchanged broken files are not tried (nor counted) again
        assert registry.get("iris").version == 1 and registry.is_ready()
        assert _failures(metrics, "iris") == 1
        assert "version 2" in registry.status["iris"].reason and "sha256" in registry.status["iris"].reason
        with pytest.raises(Exception, match="failed to load"):
            DataPlane(registry.settings, registry, metrics).lookup("iris", "2")
        # Fixing the files makes it eligible again.
        shutil.rmtree(tmp_path / "iris" / "2")
        write_version(tmp_path, "iris", 2, seed=2)
        await registry.reload()
        assert registry.get("iris").version == 2 and registry.status["iris"].reason == ""
        await registry.close(1)

    asyncio.run(scenario())


def test_a_version_broken_in_place_keeps_serving_from_memory(tmp_path: Path) -> None:
    write_version(tmp_path, "iris", 1, seed=1)
    registry, metrics = _registry(tmp_path)

    async def scenario() -> None:
        await registry.reload()
        served = registry.get("iris")
        corrupt_manifest(tmp_path, "iris", 1)  # a new manifest.json whose checksum does not match
        await registry.reload()
        await registry.reload()
        assert registry.get("iris") is served and registry.is_ready()
        assert "sha256" in registry.status["iris"].reason
        await registry.close(1)

    asyncio.run(scenario())
    assert _failures(metrics, "iris") == 1


def test_only_broken_versions_make_the_model_unavailable(tmp_path: Path) -> None:
    write_version(tmp_path, "iris", 1, seed=1)
    (tmp_path / "iris" / "1" / "member-0.onnx").write_bytes(b"not onnx")
    registry, metrics = _registry(tmp_path)

    async def scenario() -> None:
        await registry.reload()
        assert not registry.is_ready() and registry.status["iris"].state == "unavailable"
        await registry.close(1)

    asyncio.run(scenario())
    assert _failures(metrics, "iris") == 1


def test_a_retired_version_waits_for_requests_that_looked_it_up(tmp_path: Path) -> None:
    write_version(tmp_path, "iris", 1, seed=1)
    registry, _ = _registry(tmp_path)

    async def scenario() -> None:
        await registry.reload()
        old = registry.get("iris")
        old.enter()  # a request between lookup and submit (reading its body)
        write_version(tmp_path, "iris", 2, seed=2)
        swap = asyncio.create_task(registry.reload())
        for _ in range(400):  # bounded: until v2 serves
            await asyncio.sleep(0.01)
            if registry.get("iris").version == 2:
                break
        assert registry.get("iris").version == 2
        assert old.batcher is not None and not swap.done()  # v1 still open for the request it owes
        out = await old.batcher.submit(np.ones((1, 4), np.float32), time.perf_counter() + 5)
        assert out["probabilities"].shape == (1, 3)  # answered by v1 after v2 took over
        old.leave()  # its answer is out: the retirement may go on
        await asyncio.wait_for(swap, 5)
        await registry.close(1)

    asyncio.run(scenario())


def _info_series(metrics: Metrics, model: str) -> list[dict[str, str]]:
    return [
        s.labels
        for family in metrics.registry.collect()
        if family.name == "ensemble_model_info"
        for s in family.samples
        if s.labels["model"] == model and s.value == 1
    ]


def test_a_version_reloaded_in_place_keeps_its_info_series(tmp_path: Path) -> None:
    write_version(tmp_path, "iris", 1, seed=1)
    registry, metrics = _registry(tmp_path)

    async def scenario() -> None:
        await registry.reload()
        served = registry.get("iris")
        assert len(_info_series(metrics, "iris")) == 1
        manifest = tmp_path / "iris" / "1" / "manifest.json"
        manifest.write_bytes(manifest.read_bytes())  # a new mtime: loaded again and swapped in
        await registry.reload()
        assert registry.get("iris") is not served
        # The retired copy had the very same labels; retiring it must not remove the new one's series.
        assert [s["version"] for s in _info_series(metrics, "iris")] == ["1"]
        await registry.close(1)

    asyncio.run(scenario())
