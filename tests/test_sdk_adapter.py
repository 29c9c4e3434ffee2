"""transports/sdk.py is the one door to the SDK's internals; these tests fail loudly when an SDK
upgrade changes something it copies or relies on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mcp_types import ErrorData
from pydantic import BaseModel, ValidationError

from transports import sdk
from transports.direct import Fragments, spliced

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_sdk_is_the_tested_one() -> None:
    for name, installed in sdk.installed_versions().items():
        tested = sdk.TESTED_VERSIONS[name]
        assert installed == tested or installed.startswith(tested + "."), (
            f"{name} {installed} is installed, transports/sdk.py was written against {tested}.x: check every "
            "rule in its COPIED_RULES against the new SDK, run this file and tests/test_direct_differential.py, "
            "then update TESTED_VERSIONS and the pin in pyproject.toml")
    pinned = (ROOT / "pyproject.toml").read_text()
    for name, tested in sdk.TESTED_VERSIONS.items():
        major, minor = tested.split(".")
        pin = f'"{name}>={tested},<{major}.{int(minor) + 1}"'
        assert pin in pinned, f"pyproject.toml must pin {name} to {tested}.x"


@pytest.mark.parametrize("source", sorted(sdk.COPIED_RULES))
def test_the_sdk_source_each_rule_copies_is_unchanged(source: str) -> None:
    recorded, what = sdk.COPIED_RULES[source]
    assert sdk.fingerprint(source) == recorded, (
        f"the SDK's {source} changed (fingerprint {sdk.fingerprint(source)}, recorded {recorded}); "
        f"transports/sdk.py relies on it for: {what}. Read the new source, bring the adapter in line, "
        "then record the new fingerprint in COPIED_RULES")


def test_only_the_adapter_reaches_into_the_sdk() -> None:
    """Private SDK names and runner internals appear in transports/sdk.py only."""
    internal = re.compile(r"from mcp\.(server\.(runner|connection|_)|shared\.(jsonrpc_dispatcher|inbound|"
                          r"transport_context|message|dispatcher))|\._[a-z]\w*\(cast\(Any")
    for path in [*ROOT.glob("transports/*.py"), *ROOT.glob("server/**/*.py")]:
        if path.name != "sdk.py":
            found = internal.search(path.read_text())
            assert found is None, (f"{path.relative_to(ROOT)} uses an SDK internal ({found.group(0)}): "
                                   "go through transports/sdk.py")


def test_the_copied_exception_ladders_match_the_sdk() -> None:
    """What each era answers for a handler's exception: the shared ladder, then the era's fallback."""
    class Params(BaseModel):
        x: int

    with pytest.raises(ValidationError) as invalid:
        Params.model_validate({"x": "no"})
    invalid_params = ErrorData(code=-32602, message="Invalid request parameters", data="")
    assert sdk.session_error(invalid.value, "m") == invalid_params
    assert sdk.session_error(RuntimeError("boom"), "m") == ErrorData(code=0, message="boom")
    status, body = sdk.modern_error(RuntimeError("boom"), 7)
    assert status == 200
    assert body == b'{"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"Internal server error"}}'
    status, _ = sdk.modern_error(invalid.value, 7)
    assert status == 400


def test_the_sse_endpoint_event_is_read_as_the_sdk_writes_it() -> None:
    session_id = "0123456789abcdef0123456789abcdef"
    assert sdk.sse_endpoint_session_id(f"event: endpoint\r\ndata: /messages/?session_id={session_id}\r\n\r\n"
                                       .encode()) == session_id
    assert sdk.sse_endpoint_session_id(b"event: message\r\ndata: {}\r\n\r\n") is None


def test_an_initialize_answer_is_read_from_json_and_from_sse() -> None:
    assert sdk.initialize_succeeded("application/json", b'{"jsonrpc":"2.0","id":1,"result":{}}')
    assert not sdk.initialize_succeeded("application/json", b'{"jsonrpc":"2.0","id":1,"error":{"code":1}}')
    stream = (b'id: 1\r\ndata: \r\nretry: 1000\r\n\r\n'
              b'event: message\r\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\r\n\r\n')
    assert sdk.initialize_succeeded("text/event-stream", stream)
    assert not sdk.initialize_succeeded("text/event-stream", stream.replace(b'"result"', b'"error"'))
    assert not sdk.initialize_succeeded("text/event-stream", b"id: 1\r\ndata: \r\n\r\n")


@pytest.mark.parametrize("count", [1, 31, 32, 33, 100, 300])
def test_any_number_of_fragments_is_spliced_in_place(count: int) -> None:
    """Markers used to be one byte each, 0x01 + index: past 31 they ran into printable characters
    (0x20 is a space) and the body came out corrupted."""
    import json

    result = {"items": [{"text": "", "note": f"  {i} \u00e9 ,:"} for i in range(count)], "tail": " !\"#"}
    fragments: Fragments = {("items", i, "text"): [b'"frag', f" {i} ".encode(), b'"'] for i in range(count)}
    body = b"".join(spliced(result, fragments))
    expected = {"items": [{"text": f"frag {i} ", "note": f"  {i} \u00e9 ,:"} for i in range(count)],
                "tail": " !\"#"}
    assert json.loads(body) == expected


def test_a_fragment_whose_place_the_shaping_dropped_is_dropped() -> None:
    assert b"".join(spliced({"a": 1}, {("b",): [b"2"], ("a", 0): [b"3"]})) == b'{"a":1}'


def test_an_integer_beyond_64_bits_in_a_result_keeps_its_fragments() -> None:
    import json

    body = b"".join(spliced({"big": 2**70, "g": {}}, {("g",): [b'{"x":', b"1}"]}))
    assert json.loads(body) == {"big": 2**70, "g": {"x": 1}}
