"""The fixture MCP server of the conformance suite's tool, resource and prompt scenarios.

`@modelcontextprotocol/conformance` (tests/interop/node) tests a server through fixtures of its
reference "everything" server: tools named `test_*`, resources under `test://`, four prompts,
completions and logging. memory-mcp has none of them, so `tests/test_interop_node.py` mounts this
server instead of the memory tools, on the same transports, registry, event store and OAuth
(`server.app.build_app(..., mcp_server=...)`): the scenarios then exercise our stack, not the
memory tools. Every name, argument and reply below follows the scenario descriptions of the suite
(0.1.16, `dist/index.js`); see tests/interop/node/CONFORMANCE.md.

Written on the SDK's lowlevel `Server` rather than `MCPServer`: tool input schemas are given
verbatim (the JSON Schema 2020-12 scenario checks `$schema`/`$defs` survive), elicitation schemas
too (SEP-1330's multi-select shapes are not pydantic primitives), and an unknown tool is a
JSON-RPC error, not an `isError` result, so no scenario can pass without its fixture.

`Fixture.calls` counts what was really invoked: two checks of the suite (tools-call-simple-text,
tools-call-error) pass against any server that answers an unknown tool with an `isError` text
result, so the test asserts the count as well.

Standalone, for running the suite by hand (then as in tests/interop/node/CONFORMANCE.md):
    memory-mcp users add alice --data-dir /tmp/fixture
    python -m tests.interop.conformance_fixture --port 8000 --data-dir /tmp/fixture --public-url http://127.0.0.1:8001
the whole app (OAuth included) with this server in place of the memory tools.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
from collections import Counter
from typing import Any

import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.shared.exceptions import MCPError

# A 1x1 red PNG and a 1-sample 8 kHz mono WAV: the smallest well-formed files of their kinds.
PNG_1X1 = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082")).decode()
WAV_1 = base64.b64encode(
    b"RIFF" + (37).to_bytes(4, "little") + b"WAVEfmt " + bytes.fromhex("1000000001000100401f0000401f000001000800")
    + b"data" + (1).to_bytes(4, "little") + b"\x80").decode()

SIMPLE_TEXT = "This is a simple text response for testing."
ERROR_TEXT = "This tool intentionally returns an error for testing"
LOG_MESSAGES = ("Tool execution started", "Tool processing data", "Tool execution completed")
LOG_LEVELS: tuple[types.LoggingLevel, ...] = (
    "debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
RECONNECTION_TEXT = "Reconnection test completed: the result was sent after the stream closed"
TEMPLATE = re.compile(r"test://template/(?P<id>[^/]+)/data")
COMPLETIONS = ("paris", "park", "party", "test", "testing", "tested")

NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}
JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"},
                                                            "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


def _tool(name: str, description: str, schema: dict[str, Any] | None = None) -> types.Tool:
    return types.Tool(name=name, description=description, input_schema=schema or NO_ARGS)


def _string_args(*names: str) -> dict[str, Any]:
    return {"type": "object", "properties": {n: {"type": "string"} for n in names}, "required": list(names)}


TOOLS = [
    _tool("test_simple_text", "Returns one text content"),
    _tool("test_image_content", "Returns a PNG image"),
    _tool("test_audio_content", "Returns a WAV clip"),
    _tool("test_embedded_resource", "Returns an embedded text resource"),
    _tool("test_multiple_content_types", "Returns text, an image and a resource"),
    _tool("test_error_handling", "Always fails with isError"),
    _tool("test_tool_with_progress", "Reports progress 0, 50, 100 of 100"),
    _tool("test_tool_with_logging", "Sends three info log notifications"),
    _tool("test_sampling", "Asks the client to sample a message", _string_args("prompt")),
    _tool("test_elicitation", "Asks the client for a username and an email", _string_args("message")),
    _tool("test_elicitation_sep1034_defaults", "Elicits with defaults for every primitive type"),
    _tool("test_elicitation_sep1330_enums", "Elicits with the five enum shapes of SEP-1330"),
    _tool("test_reconnection", "Closes its SSE stream mid-call; the result follows on resumption"),
    _tool("json_schema_2020_12_tool", "Tool with JSON Schema 2020-12 features", JSON_SCHEMA_2020_12),
]

RESOURCES = [
    types.Resource(uri="test://static-text", name="static-text", description="A static text resource",
                   mime_type="text/plain"),
    types.Resource(uri="test://static-binary", name="static-binary", description="A static PNG",
                   mime_type="image/png"),
    types.Resource(uri="test://watched-resource", name="watched-resource",
                   description="A resource clients can subscribe to", mime_type="text/plain"),
]
TEMPLATES = [types.ResourceTemplate(uri_template="test://template/{id}/data", name="template-data",
                                    description="Data for an id", mime_type="application/json")]

PROMPTS = [
    types.Prompt(name="test_simple_prompt", description="A prompt without arguments"),
    types.Prompt(name="test_prompt_with_arguments", description="A prompt with two arguments", arguments=[
        types.PromptArgument(name="arg1", description="First test argument", required=True),
        types.PromptArgument(name="arg2", description="Second test argument", required=True)]),
    types.Prompt(name="test_prompt_with_embedded_resource", description="A prompt embedding a resource",
                 arguments=[types.PromptArgument(name="resourceUri", description="URI of the resource to embed",
                                                 required=True)]),
    types.Prompt(name="test_prompt_with_image", description="A prompt with an image"),
]

ELICIT_1034: dict[str, Any] = {"type": "object", "properties": {
    "name": {"type": "string", "default": "John Doe"},
    "age": {"type": "integer", "default": 30},
    "score": {"type": "number", "default": 95.5},
    "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
    "verified": {"type": "boolean", "default": True},
}}
ELICIT_1330: dict[str, Any] = {"type": "object", "properties": {
    "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
    "titledSingle": {"type": "string", "oneOf": [
        {"const": "value1", "title": "First Option"}, {"const": "value2", "title": "Second Option"},
        {"const": "value3", "title": "Third Option"}]},
    "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                   "enumNames": ["Option One", "Option Two", "Option Three"]},
    "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
    "titledMulti": {"type": "array", "items": {"anyOf": [
        {"const": "value1", "title": "First Choice"}, {"const": "value2", "title": "Second Choice"},
        {"const": "value3", "title": "Third Choice"}]}},
}}


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


class Fixture:
    """The fixture server and what happened to it (`calls`, `subscriptions`, `log_levels`). Per-session
    state is keyed by the Mcp-Session-Id header the request came with."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        """Invocations by tool name, and by `method` or `method:name` for everything else."""
        self.subscriptions: dict[str, set[str]] = {}
        """The URIs each session is subscribed to."""
        self.log_levels: dict[str, types.LoggingLevel] = {}
        """The level each session set with logging/setLevel (no entry: everything is sent)."""
        self.server: Server[Any] = Server(
            "memory-mcp-conformance-fixture", version="1",
            on_list_tools=self._list_tools, on_call_tool=self._call_tool,
            on_list_resources=self._list_resources, on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource, on_subscribe_resource=self._subscribe,
            on_unsubscribe_resource=self._unsubscribe, on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt, on_completion=self._complete)
        # Registered here rather than as `on_set_logging_level`, which warns that logging is
        # deprecated at 2026-07-28: the scenarios speak 2025-11-25, where it is not.
        self.server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self._set_level)

    # -- tools ---------------------------------------------------------------------------------

    async def _list_tools(self, _ctx: ServerRequestContext[Any],
                          _params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        self.calls["tools/list"] += 1
        return types.ListToolsResult(tools=TOOLS)

    async def _call_tool(self, ctx: ServerRequestContext[Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        if params.name not in {t.name for t in TOOLS}:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        self.calls[params.name] += 1
        match params.name:
            case "test_simple_text":
                return types.CallToolResult(content=[_text(SIMPLE_TEXT)])
            case "test_image_content":
                return types.CallToolResult(content=[
                    types.ImageContent(type="image", data=PNG_1X1, mime_type="image/png")])
            case "test_audio_content":
                return types.CallToolResult(content=[
                    types.AudioContent(type="audio", data=WAV_1, mime_type="audio/wav")])
            case "test_embedded_resource":
                return types.CallToolResult(content=[types.EmbeddedResource(
                    type="resource", resource=types.TextResourceContents(
                        uri="test://embedded-resource", mime_type="text/plain",
                        text="This is an embedded resource content."))])
            case "test_multiple_content_types":
                return types.CallToolResult(content=[
                    _text("Multiple content types test:"),
                    types.ImageContent(type="image", data=PNG_1X1, mime_type="image/png"),
                    types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                        uri="test://mixed-content-resource", mime_type="application/json",
                        text=json.dumps({"test": "data", "value": 123})))])
            case "test_error_handling":
                return types.CallToolResult(is_error=True, content=[_text(ERROR_TEXT)])
            case "test_tool_with_progress":
                for step, progress in enumerate((0, 50, 100)):
                    if step:
                        await asyncio.sleep(0.05)
                    await ctx.session.report_progress(progress, 100)
                return types.CallToolResult(content=[_text("Progress test completed: 0, 50, 100 of 100")])
            case "test_tool_with_logging":
                for step, message in enumerate(LOG_MESSAGES):
                    if step:
                        await asyncio.sleep(0.05)
                    await self._log(ctx, "info", message)
                return types.CallToolResult(content=[_text("Logging test completed: 3 info messages sent")])
            case "test_sampling":
                sampled = await ctx.session.create_message(
                    [types.SamplingMessage(role="user", content=_text(str(args.get("prompt", ""))))],
                    max_tokens=100, related_request_id=ctx.request_id)
                reply = sampled.content.text if isinstance(sampled.content, types.TextContent) else ""
                return types.CallToolResult(content=[_text(f"LLM response: {reply}")])
            case "test_elicitation":
                schema = {"type": "object", "properties": {
                    "username": {"type": "string", "description": "User's response"},
                    "email": {"type": "string", "description": "User's email address"}},
                    "required": ["username", "email"]}
                answer = await ctx.session.elicit_form(str(args.get("message", "")), schema,
                                                       related_request_id=ctx.request_id)
                return types.CallToolResult(content=[_text(
                    f"User response: action={answer.action}, content={json.dumps(answer.content)}")])
            case "test_elicitation_sep1034_defaults" | "test_elicitation_sep1330_enums":
                schema = ELICIT_1034 if params.name.endswith("defaults") else ELICIT_1330
                answer = await ctx.session.elicit_form("Please review these fields", schema,
                                                       related_request_id=ctx.request_id)
                return types.CallToolResult(content=[_text(
                    f"Elicitation completed: action={answer.action}, content={json.dumps(answer.content)}")])
            case "test_reconnection":
                # SEP-1699: end this request's SSE stream now; the result below goes to the event
                # store and reaches the client when it comes back with Last-Event-ID. The SDK
                # offers the callback only to clients of 2025-11-25 or later on a transport with
                # an event store (ours has one per session); otherwise the result simply follows
                # on the open stream.
                self.calls["test_reconnection:closed" if ctx.close_sse_stream else "test_reconnection:open"] += 1
                if ctx.close_sse_stream is not None:
                    await ctx.close_sse_stream()
                    await asyncio.sleep(0.2)
                return types.CallToolResult(content=[_text(RECONNECTION_TEXT)])
            case _:  # json_schema_2020_12_tool: only its listing is tested
                return types.CallToolResult(content=[_text(f"name={args.get('name')!r}")])

    async def _log(self, ctx: ServerRequestContext[Any], level: types.LoggingLevel, message: str) -> None:
        threshold = self.log_levels.get(_session_id(ctx), "debug")
        if LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold):
            await ctx.session.send_log_message(level, message, logger="conformance-fixture",
                                               related_request_id=ctx.request_id)

    async def _set_level(self, ctx: ServerRequestContext[Any],
                         params: types.SetLevelRequestParams) -> types.EmptyResult:
        self.calls["logging/setLevel"] += 1
        self.log_levels[_session_id(ctx)] = params.level
        return types.EmptyResult()

    # -- resources -----------------------------------------------------------------------------

    async def _list_resources(self, _ctx: ServerRequestContext[Any],
                              _params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        self.calls["resources/list"] += 1
        return types.ListResourcesResult(resources=RESOURCES)

    async def _list_templates(self, _ctx: ServerRequestContext[Any], _params: types.PaginatedRequestParams | None
                              ) -> types.ListResourceTemplatesResult:
        self.calls["resources/templates/list"] += 1
        return types.ListResourceTemplatesResult(resource_templates=TEMPLATES)

    async def _read_resource(self, _ctx: ServerRequestContext[Any],
                             params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        self.calls[f"resources/read:{uri}"] += 1
        contents: types.TextResourceContents | types.BlobResourceContents
        if uri == "test://static-text":
            contents = types.TextResourceContents(uri=uri, mime_type="text/plain",
                                                  text="This is the content of the static text resource.")
        elif uri == "test://static-binary":
            contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG_1X1)
        elif uri == "test://watched-resource":
            contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched resource content.")
        elif match := TEMPLATE.fullmatch(uri):
            ident = match["id"]
            contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(
                {"id": ident, "templateTest": True, "data": f"Data for ID: {ident}"}))
        else:
            raise MCPError(types.INVALID_PARAMS, f"Resource not found: {uri}", {"uri": uri})
        return types.ReadResourceResult(contents=[contents])

    async def _subscribe(self, ctx: ServerRequestContext[Any],
                         params: types.SubscribeRequestParams) -> types.EmptyResult:
        self.calls["resources/subscribe"] += 1
        self.subscriptions.setdefault(_session_id(ctx), set()).add(str(params.uri))
        return types.EmptyResult()

    async def _unsubscribe(self, ctx: ServerRequestContext[Any],
                           params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        self.calls["resources/unsubscribe"] += 1
        self.subscriptions.get(_session_id(ctx), set()).discard(str(params.uri))
        return types.EmptyResult()

    # -- prompts and completion ----------------------------------------------------------------

    async def _list_prompts(self, _ctx: ServerRequestContext[Any],
                            _params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        self.calls["prompts/list"] += 1
        return types.ListPromptsResult(prompts=PROMPTS)

    async def _get_prompt(self, _ctx: ServerRequestContext[Any],
                          params: types.GetPromptRequestParams) -> types.GetPromptResult:
        args = params.arguments or {}
        self.calls[f"prompts/get:{params.name}"] += 1
        messages: list[types.PromptMessage]
        match params.name:
            case "test_simple_prompt":
                messages = [types.PromptMessage(role="user", content=_text("This is a simple prompt for testing."))]
            case "test_prompt_with_arguments":
                messages = [types.PromptMessage(role="user", content=_text(
                    f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'"))]
            case "test_prompt_with_embedded_resource":
                messages = [
                    types.PromptMessage(role="user", content=types.EmbeddedResource(
                        type="resource", resource=types.TextResourceContents(
                            uri=args.get("resourceUri", "test://example-resource"), mime_type="text/plain",
                            text="Embedded resource content for testing."))),
                    types.PromptMessage(role="user", content=_text("Please process the embedded resource above."))]
            case "test_prompt_with_image":
                messages = [
                    types.PromptMessage(role="user", content=types.ImageContent(
                        type="image", data=PNG_1X1, mime_type="image/png")),
                    types.PromptMessage(role="user", content=_text("Please analyze the image above."))]
            case _:
                raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}")
        return types.GetPromptResult(messages=messages)

    async def _complete(self, _ctx: ServerRequestContext[Any],
                        params: types.CompleteRequestParams) -> types.CompleteResult:
        self.calls["completion/complete"] += 1
        values = [v for v in COMPLETIONS if v.startswith(params.argument.value)]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))


def _session_id(ctx: ServerRequestContext[Any]) -> str:
    headers = getattr(ctx.request, "headers", None)
    return str(headers.get("mcp-session-id", "")) if headers is not None else ""


def main() -> None:
    from aiohttp import web

    from server.app import build_app
    from server.config import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--public-url")
    ns = parser.parse_args()
    settings = Settings.model_validate({"host": "127.0.0.1", "port": ns.port, "data_dir": ns.data_dir,
                                        "public_url": ns.public_url})
    web.run_app(build_app(settings, mcp_server=Fixture().server), host="127.0.0.1", port=ns.port)


if __name__ == "__main__":
    main()
