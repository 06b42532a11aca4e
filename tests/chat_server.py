'''An OpenAI-compatible chat server on 127.0.0.1 that stands in for the LLM in tests and benchmarks.

Real HTTP (stdlib ``ThreadingHTTPServer`` in a background thread, ephemeral port), so the real ``openai``
client talks to it::

    with ChatServer(fail_first=2, fail_status=429) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="EMPTY", max_retries=0)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        srv.requests       # the request bodies received, in order (a copy; thread-safe)
        srv.max_in_flight  # the most chat requests it was handling at once

Endpoints: ``POST /v1/chat/completions`` (non-streaming, and ``stream=true`` as server-sent events),
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``.

Answers are deterministic and follow the prompt (see :func:`answer`). The transcript is the text of a
``"""``-quoted block after a line naming a transcript (all user text if there is none):

- the request asks for JSON with a ``"score"`` key: ``{"concise": ..., "score": N}``, with ``N`` from
  :func:`score_of` (1 when the transcript says "blurry", else 3 to 5 from a hash of the transcript);
- it asks for JSON with a ``"diagnosis"`` key: ``{"description": ..., "diagnosis": ...}``, the diagnosis
  from :func:`diagnosis_of` (what follows "consistent with", "diagnosis is", ... in the transcript);
- otherwise a plain-text description quoting the transcript.

Fault injection (constructor): ``fail_first`` requests get HTTP ``fail_status`` (429, 500, 503, ...) with
``Retry-After: <retry_after>`` (seconds; the openai client waits that long when it is in (0, 120], and uses
its own backoff when there is none), ``garbage_first`` requests that ask for JSON get prose instead,
``delay_s`` per request, ``api_key`` demands ``Authorization: Bearer <key>`` (401 otherwise),
``responder(body)`` may replace any answer (return ``None`` to keep the default).

Concurrency without timing: ``hold_first=n`` holds each of the first ``n`` chat requests until ``n`` are in
flight at once (or, once, :data:`HOLD_TIMEOUT_S` passed, when they never are), so a client that really sends ``n``
at once makes ``max_in_flight`` reach ``n`` however slowly its threads start.
'''

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["GARBAGE", "ChatServer", "answer", "diagnosis_of", "score_of", "transcript_of", "wants_json"]

GARBAGE = "Sorry, I would rather not answer in that format today. The clip looks interesting, though."
NO_DIAGNOSIS = "no definitive diagnosis stated"
HOLD_TIMEOUT_S = 10.0  # hold_first: only a client that never sends that many at once waits this long

_TRANSCRIPT = re.compile(r'transcript[^\n]*\n\s*"""\n(.*?)\n"""', re.IGNORECASE | re.DOTALL)
_DIAGNOSIS = re.compile(
    r"(?:consistent with|compatible with|diagnostic of|diagnosis (?:here )?is|diagnosis:)\s+([^.;\n]+)",
    re.IGNORECASE,
)


# ----------------------------------------------------------------------------------------------- answers


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _user_texts(messages: list[dict]) -> list[str]:
    return [_text(m.get("content")) for m in messages if m.get("role") == "user"]


def transcript_of(messages: list[dict]) -> str:
    """The transcript the prompt quotes (first user message that has one), else all user text."""
    for text in _user_texts(messages):
        m = _TRANSCRIPT.search(text)
        if m:
            return m.group(1).strip()
    return "\n".join(_user_texts(messages)).strip()


def score_of(transcript: str) -> int:
    """1 for a transcript that says "blurry", else 3, 4 or 5 from a hash of the transcript."""
    if "blurry" in transcript.lower():
        return 1
    return 3 + int(hashlib.sha256(transcript.encode()).hexdigest(), 16) % 3


def diagnosis_of(transcript: str) -> str:
    m = _DIAGNOSIS.search(transcript)
    return m.group(1).strip() if m else NO_DIAGNOSIS


def wants_json(body: dict) -> bool:
    """The request asks for JSON: a JSON ``response_format``, or "JSON" in the last user message."""
    fmt = body.get("response_format") or {}
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        return True
    texts = _user_texts(body.get("messages") or [])
    return bool(texts) and "json" in texts[-1].lower()


def _words(text: str, n: int) -> str:
    words = text.split()
    return " ".join(words[:n]) + (" …" if len(words) > n else "")


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?", "…")) else text + "."


def answer(body: dict) -> str:
    """The deterministic answer to a chat request (see the module docstring)."""
    messages = body.get("messages") or []
    transcript = transcript_of(messages)
    last = (_user_texts(messages) or [""])[-1]
    quoted = _words(transcript, 40) or "no narration"
    if wants_json(body) and '"diagnosis"' in last:
        description = f"Step by step, the segment shows: {_sentence(quoted)} The findings are reviewed in order."
        return json.dumps({"description": description, "diagnosis": diagnosis_of(transcript)})
    if wants_json(body) and '"score"' in last:
        previous = [_text(m.get("content")) for m in messages if m.get("role") == "assistant"]
        source = previous[-1] if previous else transcript
        concise = source.split(". ")[0].strip().rstrip(".") or quoted
        return json.dumps({"concise": _sentence(_words(concise, 20)), "score": score_of(transcript)})
    return f"The clip shows: {_sentence(quoted)}"


# ------------------------------------------------------------------------------------------------ server


class ChatServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1; a context manager (see the module docstring)."""

    def __init__(
        self,
        *,
        model: str = "vidrip-test-llm",
        fail_first: int = 0,
        fail_status: int = 429,
        retry_after: str | None = "0.01",
        garbage_first: int = 0,
        delay_s: float = 0.0,
        hold_first: int = 0,
        api_key: str | None = None,
        responder: Callable[[dict], str | None] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.model = model
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.garbage_first = garbage_first
        self.delay_s = delay_s
        self.hold_first = hold_first
        self.api_key = api_key
        self.responder = responder
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when a request comes in
        self._requests: list[dict] = []
        self._failed = 0
        self._garbled = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> ChatServer:
        handler = type("Handler", (_Handler,), {"chat": self})
        self._httpd = ThreadingHTTPServer((self._host, self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="chat-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return f"{self.url}/v1"

    @property
    def requests(self) -> list[dict]:
        """Chat request bodies received so far (refused ones included), in arrival order."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget the requests and the in-flight maximum (fault counters too)."""
        with self._lock:
            self._requests.clear()
            self._failed = self._garbled = 0
            self.max_in_flight = self.in_flight

    # -- one chat request: (status, headers, payload)

    def _chat(self, body: dict, authorization: str | None) -> tuple[int, dict[str, str], dict | str]:
        with self._lock:
            self._requests.append(body)
            if len(self._requests) <= self.hold_first:
                self._changed.wait_for(lambda: self.in_flight >= self.hold_first, timeout=HOLD_TIMEOUT_S)
                self.hold_first = 0  # the gate is open (or given up on) for everyone
                self._changed.notify_all()
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return 401, {}, _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        with self._lock:
            fail = self._failed < self.fail_first
            self._failed += fail
        if fail:
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            kind = "rate_limit_exceeded" if self.fail_status == 429 else "server_error"
            return self.fail_status, headers, _error(f"injected failure (HTTP {self.fail_status})", kind, kind)
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return 400, {}, _error("'messages' must be a non-empty list", "invalid_request_error", None)
        content = self.responder(body) if self.responder is not None else None
        if content is None:
            content = answer(body)
            if wants_json(body):
                with self._lock:
                    garble = self._garbled < self.garbage_first
                    self._garbled += garble
                if garble:
                    content = GARBAGE
        return 200, {}, self._completion(body, content)

    def _completion(self, body: dict, content: str) -> dict:
        prompt_tokens = sum(len(_text(m.get("content")).split()) for m in body["messages"])
        completion_tokens = len(content.split())
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "system_fingerprint": "vidrip-tests",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._changed.notify_all()

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def _error(message: str, kind: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects
    timeout = 60
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall per request
    chat: ChatServer  # set on the subclass the server builds

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        model = {"id": self.chat.model, "object": "model", "created": 0, "owned_by": "vidrip-tests"}
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [model]})
        elif path == f"/v1/models/{self.chat.model}":
            self._send_json(200, model)
        elif path == "/health":
            self._send_json(200, {"status": "ok"})
        else:
            self._send_json(404, _error(f"no route GET {path}", "invalid_request_error", None))

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path != "/v1/chat/completions":
            self._send_json(404, _error(f"no route POST {path}", "invalid_request_error", None))
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self._send_json(400, _error(f"body is not a JSON object: {exc}", "invalid_request_error", None))
            return
        self.chat._enter()
        try:
            status, headers, payload = self.chat._chat(body, self.headers.get("Authorization"))
            if status == 200 and body.get("stream"):
                self._stream(payload, body)
            else:
                self._send_json(status, payload, headers)
        finally:
            self.chat._leave()

    def _stream(self, completion: dict, body: dict) -> None:
        """The completion as server-sent ``chat.completion.chunk`` events, then ``[DONE]``."""
        base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
        base["object"] = "chat.completion.chunk"
        content = completion["choices"][0]["message"]["content"]
        deltas = [({"role": "assistant", "content": ""}, None), ({"content": content}, None), ({}, "stop")]
        events = [
            {**base, "choices": [{"index": 0, "delta": d, "finish_reason": f, "logprobs": None}]} for d, f in deltas
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": completion["usage"]})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
