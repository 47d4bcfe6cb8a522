import asyncio
import json
from pathlib import Path

import pytest

from server.dataplane import DataPlane
from server.errors import ModelLoadError, NotFound, Unavailable
from server.metrics import Metrics
from server.repository import ModelRegistry, scan, validate_version
from server.settings import Settings, VersionPolicy
from testing.repositories import corrupt_manifest, write_version


def test_scan_skips_bad_names_and_non_version_folders(tmp_path: Path) -> None:
    write_version(tmp_path, "good", 1)
    write_version(tmp_path, "good", 3)
    (tmp_path / "good" / "0").mkdir()
    (tmp_path / "good" / "latest").mkdir()
    (tmp_path / "good" / "02").mkdir()  # would otherwise be read as version 2 and looked for in good/2
    (tmp_path / "Bad Name").mkdir()
    assert scan(tmp_path) == {"good": [1, 3]}


def test_version_policies() -> None:
    assert VersionPolicy.parse("latest").select([1, 2, 5]) == [5]
    assert VersionPolicy.parse("all").select([1, 2, 5]) == [1, 2, 5]
    assert VersionPolicy.parse("1,5,7").select([1, 2, 5]) == [1, 5]
    assert VersionPolicy.parse("latest").select([]) == []


def test_settings_refuse_bad_policy() -> None:
    with pytest.raises(ValueError, match="version_policy"):
        Settings(version_policy="newest")
    assert Settings(version_policy=" 2, 1 ").version_policy == VersionPolicy("specific", (1, 2))
    with pytest.raises(ValueError, match="version_policy"):
        Settings(version_policy="01")  # one version rule: "01" is not a version anywhere


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("checksum", "does not match its sha256"),
        ("missing_member", "member-0.onnx is missing"),
        ("missing_manifest", "manifest.json is missing"),
        ("bad_json", "invalid manifest.json"),
        ("wrong_name", "manifest says other/1"),
    ],
)
def test_validation_reasons(tmp_path: Path, breakage: str, message: str) -> None:
    write_version(tmp_path, "m", 1)
    vdir = tmp_path / "m" / "1"
    if breakage == "checksum":
        corrupt_manifest(tmp_path, "m", 1)
    elif breakage == "missing_member":
        (vdir / "member-0.onnx").unlink()
    elif breakage == "missing_manifest":
        (vdir / "manifest.json").unlink()
    elif breakage == "bad_json":
        (vdir / "manifest.json").write_text("{")
    else:
        data = json.loads((vdir / "manifest.json").read_text())
        data["name"] = "other"
        (vdir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=message):
        validate_version(vdir, "m", 1)


def test_registry_serves_good_models_and_reports_broken_ones(tmp_path: Path) -> None:
    write_version(tmp_path, "good", 1)
    write_version(tmp_path, "good", 2, seed=1)
    write_version(tmp_path, "bad", 1)
    corrupt_manifest(tmp_path, "bad", 1)
    metrics = Metrics()
    settings = Settings(model_repository=tmp_path, warmup_runs=1, max_batch_size=8)

    async def main() -> None:
        reg = ModelRegistry(settings, metrics)
        plane = DataPlane(settings, reg, metrics)  # turns what the registry lacks into 404 / 503
        await reg.reload()
        assert reg.get("good").version == 2
        assert reg.get("good", 1) is None
        with pytest.raises(NotFound):
            plane.lookup("good", "1")  # on disk but not chosen by the policy... reported as unknown version
        with pytest.raises(NotFound):
            plane.lookup("good", "01")  # one version rule: "01" is not a version
        with pytest.raises(Unavailable, match="sha256"):
            plane.lookup("bad", None)
        with pytest.raises(NotFound):
            plane.lookup("nothing", None)
        assert not reg.is_ready()
        assert reg.status["bad"].state == "unavailable"
        await reg.unload("good")
        with pytest.raises(Unavailable, match="not loaded"):
            plane.lookup("good", None)
        await reg.load("good")
        assert reg.get("good").version == 2
        await reg.unload("bad")
        assert reg.is_ready()
        await reg.close()

    asyncio.run(main())
    assert metrics.registry.get_sample_value("ensemble_model_load_failures_total", {"model": "bad"}) == 1


def test_reload_keeps_unchanged_versions_and_picks_up_new_ones(tmp_path: Path) -> None:
    write_version(tmp_path, "m", 1)
    settings = Settings(model_repository=tmp_path, warmup_runs=1, max_batch_size=8, version_policy="all")

    async def main() -> None:
        reg = ModelRegistry(settings, Metrics())
        await reg.reload()
        first = reg.get("m", 1)
        write_version(tmp_path, "m", 2, seed=3)
        await reg.reload()
        assert reg.get("m", 1) is first
        assert reg.get("m").version == 2
        assert reg.versions_of("m") == [1, 2]
        await reg.close()

    asyncio.run(main())
