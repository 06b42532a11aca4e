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

Requests go through :class:`vidrip.chat.ChatClient`: every answer is cached on disk (keyed by model,
:data:`PROMPT_VERSION`, the exact messages and the sampling settings), so a re-run pays nothing; HTTP
408/409/429/5xx, connection errors and timeouts are retried by the ``openai`` client itself (its backoff,
the server's ``Retry-After``), unparsable output is asked again at once by us, both out of ``max_retries``.
One bad clip becomes a result with a ``reason``, never an exception; a refused API key or an unknown model
(HTTP 401/403/404) raises :class:`~vidrip.chat.ChatError`, since no item can succeed.

Nothing happens at import time: the environment is read and the client built by :class:`InstructionGenerator`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, TypeVar

from pydantic import Field

from vidrip.chat import (
    ChatClient,
    ItemFailed,
    UnparsableOutput,
    parse_json_object,
    parse_score,
    short,
    unfence,
)
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
    "VideoContext",
    "VideoInstruction",
    "clip_messages",
    "clip_record",
    "cot_format",
    "score_format",
    "video_messages",
    "video_record",
]

log = logging.getLogger(__name__)

BASE_URL_ENV = ("VIDRIP_LLM_BASE_URL", "OPENAI_BASE_URL")
API_KEY_ENV = ("VIDRIP_LLM_API_KEY", "OPENAI_API_KEY")


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
    max_retries: int = Field(
        default=5, ge=0, description="per request: HTTP 408/409/429/5xx, connection, timeout, unparsable output"
    )
    max_concurrency: int = Field(default=4, ge=1, description="requests in flight at once")
    min_quality: int = Field(default=3, ge=0, le=5, description="clips scoring below this are dropped")
    structured_output: bool = Field(
        default=False,
        description="send the JSON rounds' schema as `response_format` (json_schema; OpenAI, vLLM and vidrip's "
        "Serve app enforce it); off for endpoints that refuse the field",
    )
    max_field_chars: int = Field(
        default=2000, ge=16, description="with structured_output: the longest text a JSON answer's field may hold"
    )

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


def _text_field(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UnparsableOutput(f"'{key}' missing or empty in {short(json.dumps(obj))!r}")
    return value.strip()


def _parse_description(text: str) -> str:
    text = unfence(text)
    if text.startswith("{"):  # a model that answered JSON anyway
        try:
            return _text_field(parse_json_object(text), "description")
        except UnparsableOutput:
            pass
    if not text:
        raise UnparsableOutput("empty description")
    return text


def _schema(name: str, fields: dict[str, dict]) -> dict:
    """``response_format`` asking for an object with exactly ``fields`` (JSON schemas of each)."""
    schema = {"type": "object", "properties": fields, "required": list(fields), "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def score_format(max_chars: int) -> dict:
    """The clip's second round as a ``response_format``: ``{"concise": str, "score": 0-5}``."""
    text = {"type": "string", "minLength": 1, "maxLength": max_chars}
    return _schema("clip_score", {"concise": text, "score": {"type": "integer", "minimum": 0, "maximum": 5}})


def cot_format(max_chars: int) -> dict:
    """The video's chain of thought as a ``response_format``: ``{"description": str, "diagnosis": str}``."""
    text = {"type": "string", "minLength": 1, "maxLength": max_chars}
    return _schema("video_cot", {"description": text, "diagnosis": text})


def _parse_score_answer(text: str) -> tuple[str, int]:
    obj = parse_json_object(text)
    if "score" not in obj:
        raise UnparsableOutput(f"'score' missing in {short(json.dumps(obj))!r}")
    return _text_field(obj, "concise"), parse_score(obj["score"])


_DIAGNOSIS_PREFIX = re.compile(r"^\s*(?:final\s+)?diagnosis\s*[:\-]\s*", re.IGNORECASE)


def _parse_cot_answer(text: str) -> tuple[str, str]:
    obj = parse_json_object(text)
    description = _text_field(obj, "description")
    diagnosis = _DIAGNOSIS_PREFIX.sub("", _text_field(obj, "diagnosis")).strip()
    if not diagnosis:
        raise UnparsableOutput("'diagnosis' is empty")
    return description, diagnosis


# ------------------------------------------------------------------------------------------------ generator

T = TypeVar("T")


class InstructionGenerator:
    """Clip and video instructions from an OpenAI-compatible endpoint, cached on disk, ``max_concurrency`` at once.

    ``stats``: ``requests`` (HTTP calls made), ``cache_hits``, ``retries``, ``failures`` (items that got a
    failure reason), ``skipped`` (items with no text to describe), ``prompt_tokens``, ``completion_tokens``.
    """

    def __init__(self, cfg: LLMConfig, cache_dir: str | Path):
        self.cfg = cfg
        self.base_url = cfg.resolved_base_url()
        self.chat = ChatClient.for_section(
            cfg,
            base_url=self.base_url,
            api_key=cfg.resolved_api_key(),
            cache_dir=cache_dir,
            setting="llm",
            what="LLM",
            key_hint=f"'llm.api_key' or the environment variable {' or '.join(API_KEY_ENV)}",
        )
        self.stats = self.chat.stats

    # -- public

    def clips(self, items: list[ClipContext]) -> list[ClipInstruction]:
        """Two rounds per clip (describe; concise + score); ``kept`` when ``score >= min_quality``. Input order."""
        return self.chat.map(self._clip, items)

    def videos(self, items: list[VideoContext]) -> list[VideoInstruction]:
        """One chain-of-thought request per teaching segment. Input order."""
        return self.chat.map(self._video, items)

    def check_endpoint(self) -> None:
        """Fail fast when the endpoint is unreachable or refuses the key (see :meth:`ChatClient.check_endpoint`)."""
        self.chat.check_endpoint()

    def client(self):
        """The ``openai.OpenAI`` client (built on first use)."""
        return self.chat.client()

    def close(self) -> None:
        self.chat.close()

    def __enter__(self) -> InstructionGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- per item

    def _clip(self, ctx: ClipContext) -> ClipInstruction:
        if not ctx.transcript.strip() and not any(s.strip() for s in ctx.screen_text):
            self.chat.count("skipped")
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
            concise, score = self._complete(followup, _parse_score_answer, score_format)
        except ItemFailed as exc:
            self.chat.count("failures")
            log.warning("clip %s: %s", ctx.clip_id, exc)
            return ClipInstruction(ctx.clip_id, description, None, None, False, str(exc))
        kept = score >= self.cfg.min_quality
        reason = None if kept else f"quality {score} < {self.cfg.min_quality}"
        return ClipInstruction(ctx.clip_id, description, concise, score, kept, reason)

    def _video(self, ctx: VideoContext) -> VideoInstruction:
        texts = [ctx.transcript, *ctx.screen_text, *ctx.clip_descriptions]
        if not any(t.strip() for t in texts):
            self.chat.count("skipped")
            return VideoInstruction(ctx.video_id, None, None, None, False, "no transcript, on-screen text or clips")
        try:
            description, diagnosis = self._complete(video_messages(ctx), _parse_cot_answer, cot_format)
        except ItemFailed as exc:
            self.chat.count("failures")
            log.warning("video %s: %s", ctx.video_id, exc)
            return VideoInstruction(ctx.video_id, None, None, None, False, str(exc))
        answer = f"{description}\n\nDiagnosis: {diagnosis}"
        return VideoInstruction(ctx.video_id, description, diagnosis, answer, True, None)

    def _complete(
        self, messages: list[dict[str, str]], parse: Callable[[str], T], fmt: Callable[[int], dict] | None = None
    ) -> T:
        cfg = self.cfg
        request = {
            "model": cfg.model,
            "messages": messages,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        if cfg.structured_output and fmt is not None:
            request["response_format"] = fmt(cfg.max_field_chars)
        return self.chat.complete(request, parse, cache_extra={"prompt_version": PROMPT_VERSION})


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
