"""The OpenAI chat-completions protocol as vidrip speaks it: requests, replies, stream chunks and errors.

A request's user turn may carry content parts of three kinds::

    {"type": "text", "text": "What is shown?"}
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}
    {"type": "video_url", "video_url": {"url": "https://... | data:video/mp4;base64,... | cases/a.mp4"}}

A request may choose how a video is sampled with vLLM's per-request field ``media_io_kwargs``:
``{"video": {"num_frames": 32}}`` (uniform frames, as in the paper's evaluation) or ``{"video": {"fps": 2}}``
(capped by the endpoint's ``frames.max_frames``); both: ``fps``, at most ``num_frames``. Without it the
endpoint's own frame policy applies (as in training).

Fields a client may send that change nothing here (``user``, ``stream_options`` beyond usage, ...) are
ignored, as OpenAI's own servers do; fields that would change the answer and are not supported (``n`` > 1,
tools) are refused by name. ``response_format`` (``json_object``, ``json_schema``) is enforced while
generating (:mod:`vidrip.serve.structured`). Errors are OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "APIError",
    "ChatRequest",
    "ImagePart",
    "JsonSchemaFormat",
    "MediaIOKwargs",
    "Message",
    "ResponseFormat",
    "TextPart",
    "VideoPart",
    "chunk",
    "completion",
    "error_body",
    "new_stream_id",
]


class APIError(Exception):
    """An error the client sees: HTTP status and OpenAI's error object. The message never holds a trace."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def __reduce__(self):  # crosses Ray's process boundaries intact
        return (_api_error, (self.status, self.message, self.type, self.param, self.code))

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def _api_error(status, message, type, param, code) -> APIError:
    return APIError(status, message, type=type, param=param, code=code)


def error_body(message: str, type: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Part):
    type: Literal["text"]
    text: str


class _URL(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str = Field(min_length=1)


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: _URL


class VideoPart(_Part):
    type: Literal["video_url"]
    video_url: _URL


Part = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class VideoIOKwargs(BaseModel):
    """How to sample a request's video: ``num_frames`` uniform frames, or ``fps`` frames per second."""

    model_config = ConfigDict(extra="forbid")
    num_frames: int | None = Field(default=None, ge=1)
    fps: float | None = Field(default=None, gt=0)


class MediaIOKwargs(BaseModel):
    """vLLM's per-request ``media_io_kwargs``; only ``video`` means something here."""

    model_config = ConfigDict(extra="ignore")
    video: VideoIOKwargs = Field(default_factory=VideoIOKwargs)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field(default="response", min_length=1)
    description: str | None = None
    json_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format`` of a chat-completions request."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="one choice per request")
    media_io_kwargs: MediaIOKwargs | None = None
    response_format: ResponseFormat | None = None

    def token_budget(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


def _id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
    """A non-streaming reply."""
    return {
        "id": _id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def chunk(ident: str, created: int, model: str, delta: dict, finish_reason: str | None = None, usage=None) -> dict:
    """One server-sent event of a streamed reply (``usage`` only on the last, when asked for)."""
    out = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}] if usage is None else [],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def new_stream_id() -> tuple[str, int]:
    return _id(), int(time.time())
