"""Mock LLM provider upstream (OpenAI, Anthropic, Gemini) for the SDK end-to-end tests.

Pure Python standard library. One server answers all three providers' paths:

    POST /v1/chat/completions                              OpenAI Chat Completions (JSON / SSE)
    POST /v1/responses                                     OpenAI Responses (JSON / SSE with event:)
    POST /v1/messages                                      Anthropic Messages (JSON / SSE with event:)
    POST /v1beta/models/{model}:generateContent            Gemini (JSON)
    POST /v1beta/models/{model}:streamGenerateContent      Gemini stream (?alt=sse: SSE with CRLF;
                                                           without: one progressively sent JSON array)
    (the Gemini routes also answer under /v1/ and /v1alpha/: google-genai 3.x defaults to v1)

Every request is recorded (method, raw target including the query, headers as an ordered list of
(name, value) pairs keeping duplicates and the sender's spelling, raw body bytes).

Responses are shaped like the real providers' so the official SDKs parse them. Streams are sent
event by event with chunked transfer encoding and a flush after every event.

Non-streamed JSON answers are gzip-compressed when the request's Accept-Encoding allows gzip
(as api.openai.com and the others do); streams are sent uncompressed. MockUpstream(compress=False)
turns that off.

Behaviour switches (all driven by the request itself so that they survive a proxy):
  * tools present in the request  -> the answer is a tool/function call get_weather({"city":"Paris"})
    (the tool name is the first tool's name in the request)
  * model name containing "mock-status-NNN" -> provider-shaped error with HTTP status NNN
  * model name containing "mock-slow"         -> streams wait SLOW_EVENT_DELAY between events (to
    tell a proxy that forwards events as they come from one that buffers)

The model in every answer is the model the client sent (echoed verbatim), so a capture layer's
"model" is unambiguous in tests.

Run standalone for manual poking:  python mock_upstream.py [port]
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

# Text the mock always answers with, split into these stream pieces.
TEXT_PIECES = ["Hello", " from", " the", " mock", "!"]
TEXT = "".join(TEXT_PIECES)
TOOL_ARGS = {"city": "Paris"}
# Argument JSON split into fragments, as providers do when streaming tool calls.
TOOL_ARG_PIECES = ['{"ci', 'ty": "', 'Par', 'is"}']
TOOL_ARGS_JSON = "".join(TOOL_ARG_PIECES)
assert json.loads(TOOL_ARGS_JSON) == TOOL_ARGS

# Delay between streamed events (seconds): small, but makes a buffering proxy visible in TTFT.
STREAM_EVENT_DELAY = 0.005

# Delay between streamed events for models named "...mock-slow...".
SLOW_EVENT_DELAY = 0.15

CREATED = 1721631035


@dataclass
class CapturedRequest:
    method: str
    target: str  # raw request target as received, e.g. "/v1beta/models/x:streamGenerateContent?alt=sse"
    headers: List[Tuple[str, str]]
    body: bytes
    http_version: str = "HTTP/1.1"
    received_at: float = field(default_factory=time.time)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urlsplit(self.target).query

    @property
    def query_params(self) -> dict:
        return parse_qs(self.query, keep_blank_values=True)

    def header_values(self, name: str) -> List[str]:
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def header(self, name: str) -> Optional[str]:
        vals = self.header_values(name)
        return vals[0] if vals else None

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self) -> str:  # compact, for assertion messages
        return (
            f"CapturedRequest({self.method} {self.target} headers={self.headers!r} "
            f"body={self.body[:300]!r}{'...' if len(self.body) > 300 else ''})"
        )


# --------------------------------------------------------------------------------------------
# Response builders
# --------------------------------------------------------------------------------------------


def _first_tool_name_openai_chat(req: dict) -> Optional[str]:
    for t in req.get("tools") or []:
        fn = t.get("function") if isinstance(t, dict) else None
        if fn and fn.get("name"):
            return fn["name"]
    return None


def _first_tool_name_openai_responses(req: dict) -> Optional[str]:
    for t in req.get("tools") or []:
        if isinstance(t, dict) and t.get("type") == "function" and t.get("name"):
            return t["name"]
    return None


def _first_tool_name_anthropic(req: dict) -> Optional[str]:
    for t in req.get("tools") or []:
        if isinstance(t, dict) and t.get("name"):
            return t["name"]
    return None


def _first_tool_name_gemini(req: dict) -> Optional[str]:
    for t in req.get("tools") or []:
        if not isinstance(t, dict):
            continue
        decls = t.get("functionDeclarations") or t.get("function_declarations") or []
        for d in decls:
            if isinstance(d, dict) and d.get("name"):
                return d["name"]
    return None


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# ---- OpenAI chat ----------------------------------------------------------------------------

OPENAI_CHAT_USAGE = {
    "prompt_tokens": 14,
    "completion_tokens": 5,
    "total_tokens": 19,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def openai_chat_json(req: dict) -> dict:
    model = req.get("model", "unknown")
    tool = _first_tool_name_openai_chat(req)
    if tool:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_mock_1",
                    "type": "function",
                    "function": {"name": tool, "arguments": TOOL_ARGS_JSON},
                }
            ],
            "refusal": None,
            "annotations": [],
        }
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": TEXT, "refusal": None, "annotations": []}
        finish = "stop"
    return {
        "id": "chatcmpl-mock-1",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": OPENAI_CHAT_USAGE,
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }


def openai_chat_sse(req: dict) -> Iterable[bytes]:
    model = req.get("model", "unknown")
    include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
    tool = _first_tool_name_openai_chat(req)

    def chunk(choices: list, usage: Any = "absent") -> bytes:
        obj = {
            "id": "chatcmpl-mock-1",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
            "choices": choices,
        }
        if include_usage:
            obj["usage"] = None if usage == "absent" else usage
        return f"data: {_compact(obj)}\n\n".encode()

    def choice(delta: dict, finish: Optional[str] = None) -> dict:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    if tool:
        yield chunk(
            [
                choice(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_mock_1",
                                "type": "function",
                                "function": {"name": tool, "arguments": ""},
                            }
                        ],
                        "refusal": None,
                    }
                )
            ]
        )
        for piece in TOOL_ARG_PIECES:
            yield chunk([choice({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})])
        yield chunk([choice({}, "tool_calls")])
    else:
        yield chunk([choice({"role": "assistant", "content": "", "refusal": None})])
        for piece in TEXT_PIECES:
            yield chunk([choice({"content": piece})])
        yield chunk([choice({}, "stop")])
    if include_usage:
        yield chunk([], OPENAI_CHAT_USAGE)
    yield b"data: [DONE]\n\n"


# ---- OpenAI responses -----------------------------------------------------------------------

OPENAI_RESPONSES_USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 17,
}


def _responses_envelope(req: dict, status: str, output: list, usage: Optional[dict]) -> dict:
    return {
        "id": "resp_mock_1",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "model": req.get("model", "unknown"),
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": req.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": req.get("tools") or [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _responses_message_item(text: str, status: str = "completed") -> dict:
    return {
        "id": "msg_mock_1",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": (
            [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
            if status == "completed"
            else []
        ),
    }


def _responses_function_item(tool: str, arguments: str, status: str = "completed") -> dict:
    return {
        "id": "fc_mock_1",
        "type": "function_call",
        "status": status,
        "call_id": "call_mock_1",
        "name": tool,
        "arguments": arguments,
    }


def openai_responses_json(req: dict) -> dict:
    tool = _first_tool_name_openai_responses(req)
    item = _responses_function_item(tool, TOOL_ARGS_JSON) if tool else _responses_message_item(TEXT)
    return _responses_envelope(req, "completed", [item], OPENAI_RESPONSES_USAGE)


def openai_responses_sse(req: dict) -> Iterable[bytes]:
    tool = _first_tool_name_openai_responses(req)
    seq = [0]

    def ev(obj: dict) -> bytes:
        obj = dict(obj)
        obj["sequence_number"] = seq[0]
        seq[0] += 1
        return f"event: {obj['type']}\ndata: {_compact(obj)}\n\n".encode()

    yield ev({"type": "response.created", "response": _responses_envelope(req, "in_progress", [], None)})
    yield ev({"type": "response.in_progress", "response": _responses_envelope(req, "in_progress", [], None)})
    if tool:
        yield ev(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": _responses_function_item(tool, "", "in_progress"),
            }
        )
        for piece in TOOL_ARG_PIECES:
            yield ev(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": "fc_mock_1",
                    "output_index": 0,
                    "delta": piece,
                }
            )
        yield ev(
            {
                "type": "response.function_call_arguments.done",
                "item_id": "fc_mock_1",
                "output_index": 0,
                "name": tool,
                "arguments": TOOL_ARGS_JSON,
            }
        )
        done_item = _responses_function_item(tool, TOOL_ARGS_JSON)
        yield ev({"type": "response.output_item.done", "output_index": 0, "item": done_item})
    else:
        yield ev(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": _responses_message_item("", "in_progress"),
            }
        )
        yield ev(
            {
                "type": "response.content_part.added",
                "item_id": "msg_mock_1",
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            }
        )
        for piece in TEXT_PIECES:
            yield ev(
                {
                    "type": "response.output_text.delta",
                    "item_id": "msg_mock_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": piece,
                    "logprobs": [],
                }
            )
        yield ev(
            {
                "type": "response.output_text.done",
                "item_id": "msg_mock_1",
                "output_index": 0,
                "content_index": 0,
                "text": TEXT,
                "logprobs": [],
            }
        )
        yield ev(
            {
                "type": "response.content_part.done",
                "item_id": "msg_mock_1",
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": TEXT, "annotations": [], "logprobs": []},
            }
        )
        done_item = _responses_message_item(TEXT)
        yield ev({"type": "response.output_item.done", "output_index": 0, "item": done_item})
    yield ev(
        {
            "type": "response.completed",
            "response": _responses_envelope(req, "completed", [done_item], OPENAI_RESPONSES_USAGE),
        }
    )


# ---- Anthropic messages ---------------------------------------------------------------------

ANTHROPIC_USAGE = {
    "input_tokens": 25,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 12,
    "service_tier": "standard",
}


def anthropic_json(req: dict) -> dict:
    tool = _first_tool_name_anthropic(req)
    if tool:
        content = [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_mock_1", "name": tool, "input": TOOL_ARGS},
        ]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": TEXT}]
        stop = "end_turn"
    return {
        "id": "msg_mock_1",
        "type": "message",
        "role": "assistant",
        "model": req.get("model", "unknown"),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": ANTHROPIC_USAGE,
    }


def anthropic_sse(req: dict) -> Iterable[bytes]:
    tool = _first_tool_name_anthropic(req)

    def ev(obj: dict, raw: Optional[str] = None) -> bytes:
        return f"event: {obj['type']}\ndata: {raw if raw is not None else _compact(obj)}\n\n".encode()

    start_usage = dict(ANTHROPIC_USAGE)
    start_usage["output_tokens"] = 1
    yield ev(
        {
            "type": "message_start",
            "message": {
                "id": "msg_mock_1",
                "type": "message",
                "role": "assistant",
                "model": req.get("model", "unknown"),
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start_usage,
            },
        }
    )
    first_text = "Let me check." if tool else None
    yield ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    # Real ping events have a space after the colon.
    yield ev({"type": "ping"}, raw='{"type": "ping"}')
    pieces = [first_text] if first_text else TEXT_PIECES
    for piece in pieces:
        yield ev(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
        )
    yield ev({"type": "content_block_stop", "index": 0})
    if tool:
        yield ev(
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_mock_1", "name": tool, "input": {}},
            }
        )
        yield ev({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}})
        for piece in TOOL_ARG_PIECES:
            yield ev(
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                }
            )
        yield ev({"type": "content_block_stop", "index": 1})
    yield ev(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None},
            # cumulative counts
            "usage": {
                "input_tokens": ANTHROPIC_USAGE["input_tokens"],
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": ANTHROPIC_USAGE["output_tokens"],
            },
        }
    )
    yield ev({"type": "message_stop"})


# ---- Gemini ---------------------------------------------------------------------------------


def _gemini_usage(candidates_tokens: int) -> dict:
    return {
        "promptTokenCount": 21,
        "candidatesTokenCount": candidates_tokens,
        "totalTokenCount": 21 + candidates_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 21}],
    }


def gemini_json(req: dict, model: str) -> dict:
    tool = _first_tool_name_gemini(req)
    if tool:
        parts = [{"functionCall": {"name": tool, "args": TOOL_ARGS}}]
    else:
        parts = [{"text": TEXT}]
    return {
        "candidates": [
            {"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": _gemini_usage(5),
        "modelVersion": model,
        "responseId": "mockresp1",
    }


def gemini_stream_objs(req: dict, model: str) -> List[dict]:
    tool = _first_tool_name_gemini(req)
    out = []
    if tool:
        out.append(
            {
                "candidates": [
                    {
                        "content": {"parts": [{"functionCall": {"name": tool, "args": TOOL_ARGS}}], "role": "model"},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": _gemini_usage(5),
                "modelVersion": model,
                "responseId": "mockresp1",
            }
        )
        return out
    n = len(TEXT_PIECES)
    for i, piece in enumerate(TEXT_PIECES):
        cand: dict = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}
        if i == n - 1:
            cand["finishReason"] = "STOP"
        out.append(
            {
                "candidates": [cand],
                # every chunk carries usageMetadata; counts grow, the last one wins
                "usageMetadata": _gemini_usage(i + 1),
                "modelVersion": model,
                "responseId": "mockresp1",
            }
        )
    return out


# ---- errors ---------------------------------------------------------------------------------


def provider_error(provider: str, status: int) -> dict:
    if provider == "anthropic":
        return {"type": "error", "error": {"type": "api_error", "message": f"mock error {status}"}}
    if provider == "google":
        return {"error": {"code": status, "message": f"mock error {status}", "status": "INTERNAL"}}
    return {
        "error": {"message": f"mock error {status}", "type": "server_error", "param": None, "code": None}
    }


# --------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------

_GEMINI_RE = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/([^/:]+):(generateContent|streamGenerateContent)$")
_STATUS_RE = re.compile(r"mock-status-(\d{3})")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-upstream/1.0"
    sys_version = ""

    # keep the test output clean
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    # -- body reading ------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until blank line
                    while True:
                        t = self.rfile.readline()
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                out += self.rfile.read(size)
                self.rfile.readline()  # CRLF after chunk
            return bytes(out)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    # -- response writing --------------------------------------------------------------------
    def _send_json(self, status: int, obj: Any, provider: str, pretty: bool = False) -> None:
        body = (json.dumps(obj, indent=2) if pretty else _compact(obj)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if provider != "google" else "application/json; charset=UTF-8")
        # Like the real providers, compress non-streamed JSON when the client allows it: a proxy
        # that forwards Accept-Encoding must decode the body before reading usage from it.
        accept = (self.headers.get("Accept-Encoding") or "").lower()
        if self.server.mock.compress and "gzip" in accept:  # type: ignore[attr-defined]
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Vary", "Accept-Encoding")
        self.send_header("Content-Length", str(len(body)))
        self._provider_headers(provider)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _provider_headers(self, provider: str) -> None:
        if provider == "openai":
            self.send_header("x-request-id", "req_mock_openai")
            self.send_header("openai-processing-ms", "7")
        elif provider == "anthropic":
            self.send_header("request-id", "req_mock_anthropic")
        elif provider == "google":
            self.send_header("Vary", "Origin")
            self.send_header("Vary", "X-Origin")  # duplicate header on purpose

    def _send_stream(
        self,
        events: Iterable[bytes],
        provider: str,
        content_type: str = "text/event-stream",
        delay: float = STREAM_EVENT_DELAY,
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self._provider_headers(provider)
        self.end_headers()
        self.wfile.flush()
        try:
            for ev in events:
                if not ev:
                    continue
                self.wfile.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                self.wfile.flush()
                if delay:
                    time.sleep(delay)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- dispatch ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        body = self._read_body()
        cap = CapturedRequest(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=body,
            http_version=self.request_version,
        )
        self.server.mock._record(cap)  # type: ignore[attr-defined]

        split = urlsplit(self.path)
        path = unquote(split.path)
        query = parse_qs(split.query)
        provider = "openai"
        if path == "/v1/messages":
            provider = "anthropic"
        elif path.startswith(("/v1beta/", "/v1alpha/", "/v1/models/")):
            provider = "google"

        try:
            req = json.loads(body) if body else {}
        except ValueError:
            self._send_json(400, {"error": {"message": "mock: body is not JSON", "type": "invalid_request_error"}}, provider)
            return
        if not isinstance(req, dict):
            req = {}

        m_gem = _GEMINI_RE.match(path)
        model_for_status = m_gem.group(1) if m_gem else str(req.get("model", ""))
        m_status = _STATUS_RE.search(model_for_status)
        if m_status and self.command == "POST":
            status = int(m_status.group(1))
            self._send_json(status, provider_error(provider, status), provider)
            return

        delay = SLOW_EVENT_DELAY if "mock-slow" in model_for_status else STREAM_EVENT_DELAY
        if self.command == "POST" and path == "/v1/chat/completions":
            if req.get("stream"):
                self._send_stream(openai_chat_sse(req), provider, delay=delay)
            else:
                self._send_json(200, openai_chat_json(req), provider)
        elif self.command == "POST" and path == "/v1/responses":
            if req.get("stream"):
                self._send_stream(openai_responses_sse(req), provider, delay=delay)
            else:
                self._send_json(200, openai_responses_json(req), provider)
        elif self.command == "POST" and path == "/v1/messages":
            if req.get("stream"):
                self._send_stream(anthropic_sse(req), provider, delay=delay)
            else:
                self._send_json(200, anthropic_json(req), provider)
        elif self.command == "POST" and m_gem:
            model, method = m_gem.group(1), m_gem.group(2)
            if method == "generateContent":
                self._send_json(200, gemini_json(req, model), provider, pretty=True)
            elif query.get("alt") == ["sse"]:
                objs = gemini_stream_objs(req, model)
                self._send_stream((f"data: {json.dumps(o)}\r\n\r\n".encode() for o in objs), provider, delay=delay)
            else:
                objs = gemini_stream_objs(req, model)

                def arr() -> Iterable[bytes]:
                    for i, o in enumerate(objs):
                        yield (b"[" if i == 0 else b"\r\n,") + json.dumps(o, indent=2).encode()
                    yield b"]"

                self._send_stream(arr(), provider, content_type="application/json; charset=UTF-8", delay=delay)
        else:
            self._send_json(
                404,
                {"error": {"message": f"mock: no route for {self.command} {path}", "type": "not_found"}},
                provider,
            )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class MockUpstream:
    """Start with .start(); .url is http://127.0.0.1:PORT; .requests lists CapturedRequest."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, compress: bool = True) -> None:
        #: gzip non-streamed JSON answers when the request's Accept-Encoding allows gzip
        self.compress = compress
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._requests: List[CapturedRequest] = []
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # lifecycle
    def start(self) -> "MockUpstream":
        self._server = _Server((self._host, self._port), _Handler)
        self._server.mock = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="mock-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "MockUpstream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "mock not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # recording
    def _record(self, cap: CapturedRequest) -> None:
        with self._lock:
            self._requests.append(cap)

    @property
    def requests(self) -> List[CapturedRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def mark(self) -> int:
        """Index to pass to since(): requests recorded after this point."""
        with self._lock:
            return len(self._requests)

    def since(self, mark: int) -> List[CapturedRequest]:
        with self._lock:
            return list(self._requests[mark:])


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    m = MockUpstream(port=port).start()
    print(m.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        m.stop()
