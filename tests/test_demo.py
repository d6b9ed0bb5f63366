"""The demo's sensor plumbing: every shape a sensor evaluation may return."""
from dagster import RunRequest, SensorResult, SkipReason

from bggen_assets.demo import run_requests_of


def test_run_requests_of_every_sensor_result_shape():
    a, b = RunRequest(run_key="a"), RunRequest(run_key="b")
    assert run_requests_of(SensorResult(run_requests=[a, b])) == [a, b]
    assert run_requests_of(SensorResult(skip_reason="nothing new")) == []
    assert run_requests_of(SkipReason("the miss is already a hit")) == []  # a second demo run
    assert run_requests_of([a, SkipReason("x")]) == [a]
    assert run_requests_of(None) == []
