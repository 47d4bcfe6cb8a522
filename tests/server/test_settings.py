import pytest

from server.settings import Settings


def test_environment_prefix_and_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSEMBLE_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("ENSEMBLE_DEVICE", "cpu")
    monkeypatch.setenv("ENSEMBLE_CORS_ORIGINS", '["http://localhost:3000"]')
    s = Settings()
    assert s.max_batch_size == 32 and s.device == "cpu" and s.cors_origins == ["http://localhost:3000"]
    assert s.host == "127.0.0.1" and s.admin_token is None and s.allow_nonfinite is False


def test_every_field_is_documented() -> None:
    undocumented = [name for name, f in Settings.model_fields.items() if not f.description]
    assert undocumented == []


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError, match="device"):
        Settings(device="tpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch_size"):
        Settings(max_batch_size=0)
