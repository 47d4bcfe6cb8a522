"""server.stats: Triton's statistics extension counters."""

from __future__ import annotations

from server.stats import STAGES, Statistics


def test_unknown_versions_read_as_zeros_in_tritons_shape() -> None:
    entry = Statistics().model_stats("m", "1")
    assert entry["name"] == "m" and entry["version"] == "1"
    assert entry["inference_count"] == entry["execution_count"] == 0
    assert entry["inference_stats"] == {stage: {"count": 0, "ns": 0} for stage in STAGES}


def test_requests_and_batches_accumulate_in_nanoseconds() -> None:
    stats = Statistics()
    stats.record_request("m", "1", True, 0.002)
    stats.record_request("m", "1", False, 0.001)
    # Two requests (3 rows) ran as one batch of 4 ms after waiting 1 and 0.5 ms.
    stats.record_batch("m", "1", [0.001, 0.0005], 0.004, 3)
    entry = stats.model_stats("m", "1")
    inference = entry["inference_stats"]
    assert inference["success"] == {"count": 1, "ns": 2_000_000}
    assert inference["fail"] == {"count": 1, "ns": 1_000_000}
    assert inference["queue"] == {"count": 2, "ns": 1_500_000}
    # Each request saw the whole batch's run, as in Triton.
    assert inference["compute_infer"] == {"count": 2, "ns": 8_000_000}
    assert (entry["inference_count"], entry["execution_count"]) == (3, 1)
    assert entry["last_inference"] > 0
    assert all(isinstance(v, int) for stage in inference.values() for v in stage.values())
    assert stats.model_stats("m", "2")["execution_count"] == 0
