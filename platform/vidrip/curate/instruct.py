"""Instruction generation: an LLM turns each clip's narration and on-screen text into instruction data.

The last curation step of ViDRiP (arXiv 2505.04192), through any OpenAI-compatible chat endpoint
(OpenAI, vLLM, Ray Serve, a test server on loopback):

- clips, two rounds in one conversation: round 1 "describe" the clip from its transcript and OCR text,
  round 2 a concise description and a 0–5 quality score as JSON; clips scoring ``>= min_quality`` are kept;
- videos (a whole teaching segment of one source video): a chain-of-thought JSON
  ``{"description", "diagnosis"}``, rendered as an answer that ends in ``Diagnosis: <diagnosis>``.

Usage::

    gen = InstructionGenerator(LLMConfig(base_url="http://127.0.0.1:8000/v1", model="qwen2-7b"), "work/llm-cache")
    results = gen.clips([ClipContext("c1", "clips/c1.mp4", "lecture.mp4", 3.0, 9.5, transcript, ocr_lines)])
    records = [clip_record(ctx, r) for ctx, r in zip(contexts, results) if r.kept]
    gen.stats  # {"requests": 2, "cache_hits": 0, "retries": 0, "failures": 0, ...}

Every answer is cached on disk (one JSON file per request, keyed by model, :data:`PROMPT_VERSION`, the
exact messages and the sampling settings), so a re-run pays nothing. Retries (HTTP 429/5xx, connection
errors, timeouts, unparsable output) are ours, with exponential backoff and ``Retry-After``; the
client's own retries are off. One bad clip becomes a result with a ``reason``, never an exception; a
refused API key or an unknown model (HTTP 401/403/404) raises :class:`LLMError`, since no item can succeed.

Nothing happens at import time: the environment is read and the client built by :class:`InstructionGenerator`.
"""

from __future__ import annotations

import ast
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, TypeVar

from pydantic import Field

from vidrip.config import ConfigError, StrictConfig

__all__ = [
    "CLIP_DESCRIBE_PROMPT",
    "CLIP_QUESTIONS",
    "CLIP_SCORE_PROMPT",
    "CLIP_SYSTEM_PROMPT",
    "PROMPT_VERSION",
    "VIDEO_COT_PROMPT",
    "VIDEO_QUESTION",
    "VIDEO_SYSTEM_PROMPT",
    "ClipContext",
    "ClipInstruction",
    "Instruct",
    "InstructionGenerator",
    "LLMConfig",
    "LLMError",
    "UnparsableOutput",
    "VideoContext",
    "VideoInstruction",
    "cache_key",
    "clip_messages",
    "clip_record",
    "parse_json_object",
    "parse_score",
    "video_messages",
    "video_record",
]

log = logging.getLogger(__name__)

BASE_URL_ENV = ("VIDRIP_LLM_BASE_URL", "OPENAI_BASE_URL")
API_KEY_ENV = ("VIDRIP_LLM_API_KEY", "OPENAI_API_KEY")
_MAX_BACKOFF_S = 60.0  # cap of the exponential backoff
_MAX_RETRY_AFTER_S = 300.0  # a server's Retry-After is honoured up to this


# --------------------------------------------------------------------------------------------------- config


class LLMConfig(StrictConfig):
    """The LLM endpoint and how we call it (the ``llm`` section of the curation config)."""

    base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL (…/v1); else $VIDRIP_LLM_BASE_URL, $OPENAI_BASE_URL"
    )
    model: str = Field(default="gpt-4o-mini", min_length=1)
    api_key: str | None = Field(
        default=None, description="else $VIDRIP_LLM_API_KEY, $OPENAI_API_KEY, else 'EMPTY' (local servers)"
    )
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=1)
    timeout_s: float = Field(default=60.0, gt=0.0)
    max_retries: int = Field(default=5, ge=0, description="per request: HTTP 429/5xx, connection, unparsable output")
    backoff_s: float = Field(default=1.0, ge=0.0, description="first backoff; doubles per retry, with jitter")
    max_concurrency: int = Field(default=4, ge=1, description="requests in flight at once")
    min_quality: int = Field(default=3, ge=0, le=5, description="clips scoring below this are dropped")

    def resolved_base_url(self) -> str:
        """``base_url``, else the first of ``$VIDRIP_LLM_BASE_URL``, ``$OPENAI_BASE_URL``; an error if none."""
        url = self.base_url or next((os.environ[v] for v in BASE_URL_ENV if os.environ.get(v)), None)
        if not url:
            raise ConfigError(
                "llm.base_url is not set: set the config key 'llm.base_url' to an OpenAI-compatible endpoint "
                f"(e.g. http://127.0.0.1:8000/v1), or the environment variable {' or '.join(BASE_URL_ENV)}"
            )
        return url.rstrip("/")

    def resolved_api_key(self) -> str:
        """``api_key``, else ``$VIDRIP_LLM_API_KEY``, ``$OPENAI_API_KEY``, else ``"EMPTY"`` (local servers)."""
        return self.api_key or next((os.environ[v] for v in API_KEY_ENV if os.environ.get(v)), "EMPTY")


# -------------------------------------------------------------------------------------------------- prompts

PROMPT_VERSION = "vidrip-instruct-v1"

CLIP_SYSTEM_PROMPT = """\
You are an expert pathologist preparing training data for a pathology video-language model. You are \
given the narration transcript and the on-screen text of a short clip from a pathology teaching video; \
you cannot see the video itself. Describe only what the narration and the on-screen text support: the \
tissue or organ, the stain, the magnification, and the histological findings (architecture, cells, \
nuclei, stroma, notable features). Never invent a finding, stain, magnification or diagnosis that the \
text does not state or clearly imply. Write as if describing the image itself: do not mention the \
transcript, the narrator or the on-screen text."""

CLIP_DESCRIBE_PROMPT = Template('''\
Narration transcript of the clip:
"""
${transcript}
"""

On-screen text:
"""
${screen_text}
"""

Describe what this clip shows in one paragraph of plain text (2 to 5 sentences): tissue, stain, \
magnification and findings, as far as the text above supports them.''')

CLIP_SCORE_PROMPT = """\
Now condense your description into one concise sentence, and rate the clip's value for teaching \
histopathology on a scale from 0 to 5:
5 = specific histological findings with tissue and stain or magnification;
4 = clear findings, some context missing;
3 = usable but general description of the tissue;
2 = little histology (mostly history, clinical or gross discussion);
1 = almost no usable content (introductions, logistics, an unreadable or poorly focused view);
0 = no pathology content at all.
Reply with strict JSON only, no prose and no code fences:
{"concise": "<one sentence>", "score": <integer from 0 to 5>}"""

VIDEO_SYSTEM_PROMPT = """\
You are an expert pathologist preparing training data for a pathology video-language model. You are \
given the narration transcript, the on-screen text and the clip descriptions of one teaching segment \
(one case) of a pathology video; you cannot see the video itself. Reason step by step as a pathologist \
does: the organ or tissue and the stain, then the low-power architecture, then the high-power cellular \
and nuclear detail, then any special stains or immunohistochemistry mentioned, and finally the \
diagnosis these findings support. Use only facts the text states or clearly implies; never invent \
findings. If the text gives no diagnosis and none follows from the findings, state the most specific \
conclusion the text supports instead of guessing. Write as if describing the slide itself: do not \
mention the transcript, the narrator or the on-screen text."""

VIDEO_COT_PROMPT = Template('''\
Narration transcript of the teaching segment:
"""
${transcript}
"""

On-screen text:
"""
${screen_text}
"""

Descriptions of the clips of this segment, in order:
${clip_descriptions}

Write a step-by-step description (from tissue and stain through architecture and cytology to the key \
findings) and then the diagnosis. Reply with strict JSON only, no prose and no code fences:
{"description": "<step-by-step description>", "diagnosis": "<diagnosis>"}''')

CLIP_QUESTIONS = (
    "Describe what is shown in this pathology video clip.",
    "What can you see in this histopathology clip? Describe the tissue and the findings.",
    "Provide a detailed description of this pathology video clip.",
    "Describe the histological features visible in this clip.",
    "What does this clip show? Describe the tissue, the stain and the key findings.",
)

VIDEO_QUESTION = (
    "Describe the histopathological findings in this video step by step, and give the most likely diagnosis."
)

_NONE = "(none)"


# ------------------------------------------------------------------------------------------ inputs, outputs


@dataclass
class ClipContext:
    """What the LLM knows about one clip."""

    clip_id: str
    video: str  # media path relative to the output dir
    source: str
    start: float
    end: float
    transcript: str
    screen_text: list[str]


@dataclass
class VideoContext:
    """What the LLM knows about one teaching segment of a source video."""

    video_id: str
    video: str  # media path relative to the output dir
    source: str
    transcript: str
    screen_text: list[str]
    clip_descriptions: list[str]


@dataclass
class ClipInstruction:
    """Round 1 ``description``, round 2 ``concise`` and ``score``; ``reason`` says why a clip is not kept."""

    clip_id: str
    description: str | None
    concise: str | None
    score: int | None
    kept: bool
    reason: str | None = None


@dataclass
class VideoInstruction:
    """The chain-of-thought result; ``answer`` is the record's answer text, ``reason`` set when not ``ok``."""

    video_id: str
    description: str | None
    diagnosis: str | None
    answer: str | None
    ok: bool
    reason: str | None = None


class LLMError(RuntimeError):
    """The endpoint refuses every request (bad API key, unknown model or URL): no item can succeed."""


class UnparsableOutput(ValueError):
    """The model's answer is not what the prompt asked for."""


class _ItemFailed(Exception):
    """One item's request failed for good; the message becomes its ``reason``."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


# ------------------------------------------------------------------------------------------------- messages


def _screen(lines: list[str]) -> str:
    text = "\n".join(line.strip() for line in lines if line and line.strip())
    return text or _NONE


def clip_messages(ctx: ClipContext) -> list[dict[str, str]]:
    """Round 1 messages of a clip (round 2 appends the answer and :data:`CLIP_SCORE_PROMPT`)."""
    user = CLIP_DESCRIBE_PROMPT.substitute(
        transcript=ctx.transcript.strip() or _NONE, screen_text=_screen(ctx.screen_text)
    )
    return [{"role": "system", "content": CLIP_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def video_messages(ctx: VideoContext) -> list[dict[str, str]]:
    """The chain-of-thought request of a teaching segment."""
    clips = "\n".join(f"{i}. {d.strip()}" for i, d in enumerate((d for d in ctx.clip_descriptions if d.strip()), 1))
    user = VIDEO_COT_PROMPT.substitute(
        transcript=ctx.transcript.strip() or _NONE,
        screen_text=_screen(ctx.screen_text),
        clip_descriptions=clips or _NONE,
    )
    return [{"role": "system", "content": VIDEO_SYSTEM_PROMPT}, {"role": "user", "content": user}]


# -------------------------------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_SCORE_TEXT = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(?:/\s*5)?\s*$")


def _short(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def parse_json_object(text: str) -> dict[str, Any]:
    """The JSON object in a model's answer: tolerates code fences, prose around it and Python-style quotes."""
    if not text or not text.strip():
        raise UnparsableOutput("empty output")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    first, last = text.find("{"), text.rfind("}")
    if 0 <= first < last:
        candidates.append(text[first : last + 1])
    decoder = json.JSONDecoder()
    for cand in candidates:
        cand = cand.strip()
        for load in (json.loads, ast.literal_eval):
            try:
                value = load(cand)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(value, dict):
                return value
        start = cand.find("{")  # an object followed by more prose containing braces
        if start >= 0:
            try:
                value, _ = decoder.raw_decode(cand, start)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    raise UnparsableOutput(f"no JSON object in output: {_short(text)!r}")


def parse_score(value: Any) -> int:
    """A 0–5 quality score from an int, a float (rounded half up) or a numeric string (``"4"``, ``"4/5"``)."""
    if isinstance(value, str) and (m := _SCORE_TEXT.match(value)):
        value = float(m.group(1))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UnparsableOutput(f"score is not a number: {value!r}")
    score = math.floor(value + 0.5)
    if not 0 <= score <= 5:
        raise UnparsableOutput(f"score {value!r} is outside 0..5")
    return int(score)


def _text_field(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UnparsableOutput(f"'{key}' missing or empty in {_short(json.dumps(obj))!r}")
    return value.strip()


def _parse_description(text: str) -> str:
    text = text.strip()
    fenced = _FENCE.fullmatch(text)
    if fenced:
        text = fenced.group(1).strip()
    if text.startswith("{"):  # a model that answered JSON anyway
        try:
            return _text_field(parse_json_object(text), "description")
        except UnparsableOutput:
            pass
    if not text:
        raise UnparsableOutput("empty description")
    return text


def _parse_score_answer(text: str) -> tuple[str, int]:
    obj = parse_json_object(text)
    if "score" not in obj:
        raise UnparsableOutput(f"'score' missing in {_short(json.dumps(obj))!r}")
    return _text_field(obj, "concise"), parse_score(obj["score"])


_DIAGNOSIS_PREFIX = re.compile(r"^\s*(?:final\s+)?diagnosis\s*[:\-]\s*", re.IGNORECASE)


def _parse_cot_answer(text: str) -> tuple[str, str]:
    obj = parse_json_object(text)
    description = _text_field(obj, "description")
    diagnosis = _DIAGNOSIS_PREFIX.sub("", _text_field(obj, "diagnosis")).strip()
    if not diagnosis:
        raise UnparsableOutput("'diagnosis' is empty")
    return description, diagnosis


# ---------------------------------------------------------------------------------------------------- cache


def cache_key(model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
    """sha256 of everything that decides the answer: model, prompt version, messages, sampling settings."""
    blob = json.dumps(
        {
            "model": model,
            "prompt_version": PROMPT_VERSION,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class _DiskCache:
    """One JSON file per key; written to a temporary file and renamed, so a reader never sees half a file."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self.path(key)
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("LLM cache entry %s unreadable (%s): asking again", path, exc)
            return None
        content = entry.get("content") if isinstance(entry, dict) else None
        return content if isinstance(content, str) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f, ensure_ascii=False, indent=1)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ------------------------------------------------------------------------------------------------ generator

T = TypeVar("T")
R = TypeVar("R")


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), if the server sent one."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) * scale
        except ValueError:
            parsed = email.utils.parsedate_tz(raw)
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if math.isfinite(seconds):
            return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)
    return None


class InstructionGenerator:
    """Clip and video instructions from an OpenAI-compatible endpoint, cached on disk, ``max_concurrency`` at once.

    ``stats``: ``requests`` (HTTP calls made), ``cache_hits``, ``retries``, ``failures`` (items that got a
    failure reason), ``skipped`` (items with no text to describe), ``prompt_tokens``, ``completion_tokens``.
    """

    def __init__(self, cfg: LLMConfig, cache_dir: str | Path):
        self.cfg = cfg
        self.base_url = cfg.resolved_base_url()
        self.cache = _DiskCache(Path(cache_dir))
        self.stats: dict[str, int] = dict.fromkeys(
            ("requests", "cache_hits", "retries", "failures", "skipped", "prompt_tokens", "completion_tokens"), 0
        )
        self._lock = threading.Lock()
        self._client: Any = None

    # -- public

    def clips(self, items: list[ClipContext]) -> list[ClipInstruction]:
        """Two rounds per clip (describe; concise + score); ``kept`` when ``score >= min_quality``. Input order."""
        return self._map(self._clip, items)

    def videos(self, items: list[VideoContext]) -> list[VideoInstruction]:
        """One chain-of-thought request per teaching segment. Input order."""
        return self._map(self._video, items)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> InstructionGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- per item

    def _clip(self, ctx: ClipContext) -> ClipInstruction:
        if not ctx.transcript.strip() and not any(s.strip() for s in ctx.screen_text):
            self._count("skipped")
            return ClipInstruction(ctx.clip_id, None, None, None, False, "no transcript or on-screen text")
        messages = clip_messages(ctx)
        description: str | None = None
        try:
            description = self._complete(messages, _parse_description)
            followup = [
                *messages,
                {"role": "assistant", "content": description},
                {"role": "user", "content": CLIP_SCORE_PROMPT},
            ]
            concise, score = self._complete(followup, _parse_score_answer)
        except _ItemFailed as exc:
            self._count("failures")
            log.warning("clip %s: %s", ctx.clip_id, exc)
            return ClipInstruction(ctx.clip_id, description, None, None, False, str(exc))
        kept = score >= self.cfg.min_quality
        reason = None if kept else f"quality {score} < {self.cfg.min_quality}"
        return ClipInstruction(ctx.clip_id, description, concise, score, kept, reason)

    def _video(self, ctx: VideoContext) -> VideoInstruction:
        texts = [ctx.transcript, *ctx.screen_text, *ctx.clip_descriptions]
        if not any(t.strip() for t in texts):
            self._count("skipped")
            return VideoInstruction(ctx.video_id, None, None, None, False, "no transcript, on-screen text or clips")
        try:
            description, diagnosis = self._complete(video_messages(ctx), _parse_cot_answer)
        except _ItemFailed as exc:
            self._count("failures")
            log.warning("video %s: %s", ctx.video_id, exc)
            return VideoInstruction(ctx.video_id, None, None, None, False, str(exc))
        answer = f"{description}\n\nDiagnosis: {diagnosis}"
        return VideoInstruction(ctx.video_id, description, diagnosis, answer, True, None)

    # -- machinery

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        if not items:
            return []
        fatal: list[LLMError] = []

        def run(item: T) -> R:
            if fatal:  # the endpoint refused us: no more requests
                raise fatal[0]
            try:
                return fn(item)
            except LLMError as exc:
                fatal.append(exc)
                raise

        workers = min(self.cfg.max_concurrency, len(items))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vidrip-llm")
        try:
            futures = [pool.submit(run, item) for item in items]
            return [f.result() for f in futures]
        finally:  # on LLMError: drop what has not started, let running requests finish
            pool.shutdown(wait=True, cancel_futures=True)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    def _complete(self, messages: list[dict[str, str]], parse: Callable[[str], T]) -> T:
        """The parsed answer to ``messages``: from the cache, else asked with retries; cached once it parses."""
        cfg = self.cfg
        key = cache_key(cfg.model, messages, cfg.temperature, cfg.max_tokens)
        cached = self.cache.get(key)
        if cached is not None:
            try:
                value = parse(cached)
            except UnparsableOutput:
                log.warning("LLM cache entry %s does not parse: asking again", self.cache.path(key))
            else:
                self._count("cache_hits")
                return value
        last: str = ""
        unparsable = False
        delay = 0.0
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(delay)
            try:
                content = self._request(messages)
                value = parse(content)
            except _Retryable as exc:
                last, unparsable = str(exc), False
                delay = exc.retry_after if exc.retry_after is not None else self._backoff(attempt)
                continue
            except UnparsableOutput as exc:
                last, unparsable = str(exc), True
                delay = self._backoff(attempt)
                continue
            entry = {
                "key": key,
                "model": cfg.model,
                "prompt_version": PROMPT_VERSION,
                "temperature": cfg.temperature,
                "max_tokens": cfg.max_tokens,
                "messages": messages,
                "content": content,
            }
            self.cache.put(key, entry)
            return value
        what = "LLM output unparsable" if unparsable else "LLM request failed"
        raise _ItemFailed(f"{what} after {cfg.max_retries} retries: {last}")

    def check_endpoint(self) -> None:
        """Fail fast, before a job starts, when the endpoint is unreachable or refuses the key
        (``GET /models``; a server without that route is given the benefit of the doubt)."""
        import openai

        try:
            self.client().models.list()
        except openai.APIConnectionError as exc:
            raise LLMError(f"LLM endpoint {self.base_url} cannot be reached ({exc}): check 'llm.base_url'") from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise self._key_refused(exc) from exc
        except openai.APIStatusError as exc:
            log.warning("LLM endpoint %s: GET /models answered HTTP %s; going on", self.base_url, exc.status_code)

    def _key_refused(self, exc) -> LLMError:
        return LLMError(
            f"LLM endpoint {self.base_url} refused the API key (HTTP {exc.status_code}): set 'llm.api_key' "
            f"or the environment variable {' or '.join(API_KEY_ENV)} ({_short(exc.message)})"
        )

    def _backoff(self, attempt: int) -> float:
        return min(self.cfg.backoff_s * 2**attempt, _MAX_BACKOFF_S) * random.uniform(0.5, 1.5)

    def client(self) -> Any:
        """The ``openai.OpenAI`` client (built on first use; its own retries off, ours count)."""
        with self._lock:
            if self._client is None:
                import openai

                self._client = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=self.cfg.resolved_api_key(),
                    timeout=self.cfg.timeout_s,
                    max_retries=0,
                )
            return self._client

    def _request(self, messages: list[dict[str, str]]) -> str:
        """One HTTP call; returns the answer text. Raises _Retryable, _ItemFailed or LLMError."""
        import openai

        client = self.client()
        self._count("requests")
        try:
            resp = client.chat.completions.create(
                model=self.cfg.model,
                messages=messages,
                temperature=self.cfg.temperature,
                max_tokens=self.cfg.max_tokens,
            )
        except openai.APITimeoutError as exc:
            raise _Retryable(f"timeout after {self.cfg.timeout_s:g} s") from exc
        except openai.APIConnectionError as exc:
            raise _Retryable(f"cannot reach {self.base_url}: {exc}") from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise self._key_refused(exc) from exc
        except openai.NotFoundError as exc:
            raise LLMError(
                f"LLM endpoint {self.base_url} answered HTTP 404 for model {self.cfg.model!r}: check 'llm.base_url' "
                f"(it usually ends in /v1) and 'llm.model' ({_short(exc.message)})"
            ) from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            if status in (408, 409, 425, 429) or status >= 500:
                raise _Retryable(f"HTTP {status}: {_short(exc.message)}", _retry_after(exc.response.headers)) from exc
            raise _ItemFailed(f"LLM request refused (HTTP {status}): {_short(exc.message)}") from exc
        except openai.APIError as exc:  # a response that is not a chat completion
            raise _Retryable(f"bad response: {_short(str(exc))}") from exc
        usage = getattr(resp, "usage", None)
        if usage is not None:
            self._count("prompt_tokens", usage.prompt_tokens or 0)
            self._count("completion_tokens", usage.completion_tokens or 0)
        choices = resp.choices or []
        content = choices[0].message.content if choices and choices[0].message is not None else None
        if not content:
            raise UnparsableOutput("no content in the response")
        return content


# -------------------------------------------------------------------------------------------------- records


def _pick_question(key: str) -> str:
    digest = hashlib.sha256(key.encode()).digest()
    return CLIP_QUESTIONS[int.from_bytes(digest[:8], "big") % len(CLIP_QUESTIONS)]


def clip_record(ctx: ClipContext, result: ClipInstruction) -> dict:
    """A LLaVA instruction record of a clip: a describe-question (fixed by the clip id), the round-1 description."""
    if not result.description:
        raise ValueError(f"clip {ctx.clip_id}: no description ({result.reason})")
    return {
        "id": ctx.clip_id,
        "video": ctx.video,
        "conversations": [
            {"from": "human", "value": "<image>\n" + _pick_question(ctx.clip_id)},
            {"from": "gpt", "value": result.description},
        ],
    }


def video_record(ctx: VideoContext, result: VideoInstruction) -> dict:
    """A LLaVA instruction record of a teaching segment: the diagnostic question, the CoT answer."""
    if not result.ok or not result.answer:
        raise ValueError(f"video {ctx.video_id}: no answer ({result.reason})")
    return {
        "id": ctx.video_id,
        "video": ctx.video,
        "conversations": [
            {"from": "human", "value": "<image>\n" + VIDEO_QUESTION},
            {"from": "gpt", "value": result.answer},
        ],
    }


# ------------------------------------------------------------------------------------------ Ray Data step


class Instruct:
    """Ray Data step (``map_batches``) on clip rows: the two-round clip instruction, as
    ``state["instruction"]`` = ``{description, concise, score, kept, reason, record}``."""

    def __init__(self, cfg: LLMConfig, cache_dir: str | Path):
        self.generator = InstructionGenerator(cfg, cache_dir)

    def __call__(self, batch: dict) -> dict:
        from vidrip.curate.rows import batch_rows, guarded_batch, rows_batch
        from vidrip.curate.transcribe import transcript_text

        def step(rows: list[dict], states: list[dict]) -> None:
            todo = [(row, st) for row, st in zip(rows, states, strict=True) if st.get("clip") is not None]
            contexts = [
                ClipContext(
                    clip_id=st["clip"]["id"],
                    video=st["clip"]["file"],
                    source=Path(row["path"]).name,
                    start=st["clip"]["start"],
                    end=st["clip"]["end"],
                    transcript=transcript_text(st.get("transcript", []), st["clip"]["start"], st["clip"]["end"]),
                    screen_text=st.get("screen_text", []),
                )
                for row, st in todo
            ]
            for (_, st), ctx, result in zip(todo, contexts, self.generator.clips(contexts), strict=True):
                st["instruction"] = {
                    "description": result.description,
                    "concise": result.concise,
                    "score": result.score,
                    "kept": result.kept,
                    "reason": result.reason,
                    "record": clip_record(ctx, result) if result.kept else None,
                }

        return rows_batch(guarded_batch("instruct", batch_rows(batch), step))
