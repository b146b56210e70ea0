"""Job data in Redis is JSON. arq stores the error of a job that ran out of tries as its
result (an exception object); that must serialize too, or arq logs a traceback and keeps
no result (seen in the hardening work, issue 9, when a job exceeded its tries)."""

from __future__ import annotations

import json
import logging

import pytest
from arq.jobs import deserialize_result, serialize_result
from arq.worker import JobExecutionFailed

from runtime.queue import deserialize, serialize


def test_a_failed_jobs_result_is_stored_as_json(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="arq.jobs")
    raw = serialize_result(
        "run_generation", ("abc",), {}, 3, 1, False,
        JobExecutionFailed("max 3 retries exceeded"), 2, 3, "ref", "q", "generation:abc",
        serializer=serialize,
    )  # fmt: skip
    assert raw is not None, caplog.text
    assert not caplog.records
    assert json.loads(raw)["r"] == "JobExecutionFailed: max 3 retries exceeded"
    result = deserialize_result(raw, deserializer=deserialize)
    assert result.success is False and result.job_try == 3


def test_anything_else_that_is_not_json_is_still_refused() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        serialize({"r": object()})
