"""Both ends of the control socket read and write the same messages (supervisor/control/protocol.py)."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from bawt_vllm.supervisor.control.protocol import (
    BadRequest,
    ErrorCode,
    LogsRequest,
    error_body,
    error_code,
    model_of,
    parse_object,
    wants_all,
)


@pytest.mark.parametrize("asked", [LogsRequest("m"), LogsRequest("m", lines=0, start=3, follow=True)])
def test_a_logs_request_survives_the_trip_through_a_query_string(asked: LogsRequest) -> None:
    assert LogsRequest.from_query(dict(parse_qsl(asked.query()))) == asked


@pytest.mark.parametrize(("query", "says"), [
    ({"model": "m", "lines": "-1"}, "'lines' must be at least 0, not -1"),
    ({"model": "m", "start": "0"}, "'start' must be at least 1, not 0"),
    ({"model": "m", "start": "x"}, "'start' must be an integer, not 'x'"),
])
def test_a_bad_logs_query_says_which_key_and_what_it_must_be(query: dict[str, str], says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        LogsRequest.from_query(query)


def test_bodies_are_objects_with_typed_keys() -> None:
    assert parse_object(b"  ") == {}
    assert model_of(parse_object(b'{"model": "m"}')) == "m"
    assert wants_all({"all": True}) and not wants_all({})
    with pytest.raises(BadRequest, match="not an array"):
        parse_object(b"[]")
    with pytest.raises(BadRequest, match="'all' must be true or false, not a number"):
        wants_all({"all": 1.5})


def test_an_error_code_is_read_back_and_an_unknown_one_is_internal() -> None:
    assert error_code(error_body("no such model", ErrorCode.UNKNOWN_MODEL)) is ErrorCode.UNKNOWN_MODEL
    assert error_code({"error": "from a newer daemon", "code": "something_new"}) is ErrorCode.INTERNAL
    assert error_code("not even an object") is ErrorCode.INTERNAL
