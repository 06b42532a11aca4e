"""Instruction generation against a real OpenAI-compatible server on loopback, through the real openai client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from chat_server import GARBAGE, ChatServer, diagnosis_of, score_of
from vidrip.chat import ChatError, UnparsableOutput, parse_json_object, parse_score
from vidrip.config import ConfigError
from vidrip.curate import instruct
from vidrip.curate.instruct import (
    CLIP_QUESTIONS,
    VIDEO_QUESTION,
    ClipContext,
    InstructionGenerator,
    LLMConfig,
    VideoContext,
    clip_record,
    video_record,
)
from vidrip.data.schema import InstructionRecord

SNAPSHOT = Path(__file__).parent / "snapshots" / "curate_prompts.txt"

TRANSCRIPTS = [
    "Here at low power we see a lymph node with effaced architecture and sheets of large atypical cells.",
    "This H and E section of skin shows a dome-shaped lesion with keratin-filled crater at 10x.",
    "Okay this field is blurry, let me refocus the microscope before we go on.",
    "At high power the nuclei are vesicular with prominent nucleoli and frequent mitoses.",
]


def clip(i: int, transcript: str, screen: list[str] | None = None) -> ClipContext:
    return ClipContext(
        clip_id=f"vid0-clip{i:03d}",
        video=f"clips/vid0-clip{i:03d}.mp4",
        source="raw/vid0.mp4",
        start=5.0 * i,
        end=5.0 * i + 4.5,
        transcript=transcript,
        screen_text=screen if screen is not None else ["H&E 10x"],
    )


def config(srv: ChatServer, **kw) -> LLMConfig:
    defaults = dict(base_url=srv.base_url, model="test-llm", max_retries=3)
    return LLMConfig(**{**defaults, **kw})


@pytest.fixture
def server():
    with ChatServer() as srv:
        yield srv


# ------------------------------------------------------------------------------------------- clips, videos


def test_clips_are_described_scored_and_filtered(server, tmp_path):
    items = [clip(i, t) for i, t in enumerate(TRANSCRIPTS)]
    with InstructionGenerator(config(server), tmp_path / "cache") as gen:
        results = gen.clips(items)

    assert [r.clip_id for r in results] == [c.clip_id for c in items]
    for ctx, r in zip(items, results, strict=True):
        assert r.description is not None and ctx.transcript.split()[3] in r.description
        assert r.concise and r.score == score_of(ctx.transcript)
        assert r.kept == (r.score >= 3)
    blurry = results[2]
    assert blurry.score == 1 and not blurry.kept and blurry.reason == "quality 1 < 3"
    assert all(r.kept and r.reason is None for i, r in enumerate(results) if i != 2)
    assert gen.stats["requests"] == 8 and gen.stats["retries"] == 0 and gen.stats["failures"] == 0
    assert gen.stats["prompt_tokens"] > 0 and gen.stats["completion_tokens"] > 0

    # what went over the wire: round 1 describes, round 2 follows up in the same conversation
    bodies = server.requests
    assert len(bodies) == 8 and {b["model"] for b in bodies} == {"test-llm"}
    round2 = [b for b in bodies if len(b["messages"]) == 4]
    assert len(round2) == 4
    for b in round2:
        assert [m["role"] for m in b["messages"]] == ["system", "user", "assistant", "user"]
        assert b["messages"][-1]["content"] == instruct.CLIP_SCORE_PROMPT
        assert b["temperature"] == 0.2 and b["max_tokens"] == 512


def test_min_quality_is_configurable(server, tmp_path):
    items = [clip(i, t) for i, t in enumerate(TRANSCRIPTS)]
    results = InstructionGenerator(config(server, min_quality=0), tmp_path).clips(items)
    assert all(r.kept for r in results)
    results = InstructionGenerator(config(server, min_quality=5), tmp_path).clips(items)
    assert [r.kept for r in results] == [score_of(t) == 5 for t in TRANSCRIPTS]
    assert all(r.reason == f"quality {r.score} < 5" for r in results if not r.kept)


def test_clip_without_text_is_skipped_without_a_request(server, tmp_path):
    gen = InstructionGenerator(config(server), tmp_path)
    [r] = gen.clips([clip(0, "   ", screen=[])])
    assert not r.kept and r.reason == "no transcript or on-screen text"
    assert server.requests == [] and gen.stats["skipped"] == 1


def test_video_chain_of_thought_answer_ends_with_diagnosis(server, tmp_path):
    transcript = (
        "This is a lymph node. Sheets of large cells replace the architecture, and the overall picture is "
        "consistent with diffuse large B-cell lymphoma. CD20 is strongly positive."
    )
    ctx = VideoContext(
        video_id="vid0-seg0",
        video="videos/vid0-seg0.mp4",
        source="raw/vid0.mp4",
        transcript=transcript,
        screen_text=["CD20", "Ki-67 90%"],
        clip_descriptions=["A lymph node at low power.", "Large atypical cells at high power."],
    )
    gen = InstructionGenerator(config(server), tmp_path)
    [r] = gen.videos([ctx])
    assert r.ok and r.reason is None
    assert r.diagnosis == diagnosis_of(transcript) == "diffuse large B-cell lymphoma"
    assert r.answer == f"{r.description}\n\nDiagnosis: {r.diagnosis}"
    assert r.answer.endswith("\nDiagnosis: diffuse large B-cell lymphoma")
    user = server.requests[0]["messages"][1]["content"]
    assert "1. A lymph node at low power." in user and "Ki-67 90%" in user and '"diagnosis"' in user

    rec = InstructionRecord.model_validate(video_record(ctx, r))
    assert rec.video == ctx.video and rec.id == ctx.video_id
    assert rec.conversations[0].value == "<image>\n" + VIDEO_QUESTION
    assert rec.conversations[1].value.endswith("Diagnosis: diffuse large B-cell lymphoma")


def test_structured_output_sends_each_json_rounds_schema(server, tmp_path):
    """``structured_output``: the score round and the chain of thought carry their JSON schema as
    ``response_format`` (the free-text round does not); off by default, for endpoints that refuse it."""
    ctx = VideoContext("vid0-seg0", "videos/vid0-seg0.mp4", "raw/vid0.mp4", TRANSCRIPTS[0], [], [])
    gen = InstructionGenerator(config(server), tmp_path / "plain")
    gen.clips([clip(0, TRANSCRIPTS[0])])
    assert len(server.requests) == 2 and all("response_format" not in r for r in server.requests)

    gen = InstructionGenerator(config(server, structured_output=True, max_field_chars=99), tmp_path / "structured")
    [c] = gen.clips([clip(0, TRANSCRIPTS[0])])
    [v] = gen.videos([ctx])
    assert c.kept and v.ok
    describe, score, cot = server.requests[2:]
    assert "response_format" not in describe
    schema = score["response_format"]["json_schema"]["schema"]
    assert score["response_format"]["type"] == "json_schema"
    assert schema["required"] == ["concise", "score"] and schema["additionalProperties"] is False
    assert schema["properties"]["score"] == {"type": "integer", "minimum": 0, "maximum": 5}
    assert schema["properties"]["concise"]["maxLength"] == 99
    assert cot["response_format"]["json_schema"]["schema"]["required"] == ["description", "diagnosis"]


def test_records_validate_and_questions_are_deterministic(server, tmp_path):
    items = [clip(i, f"{TRANSCRIPTS[0]} Field {i}.") for i in range(12)]
    results = InstructionGenerator(config(server), tmp_path).clips(items)
    records = [clip_record(c, r) for c, r in zip(items, results, strict=True) if r.kept]
    assert len(records) == 12
    questions = set()
    for c, r, d in zip(items, results, records, strict=True):
        rec = InstructionRecord.model_validate(d)
        assert rec.id == c.clip_id and rec.video == c.video and rec.media_kind == "video"
        q = rec.conversations[0].value
        assert q.startswith("<image>\n") and q.removeprefix("<image>\n") in CLIP_QUESTIONS
        assert rec.conversations[1].value == r.description
        assert clip_record(c, r) == d  # same clip, same question
        questions.add(q)
    assert len(questions) > 1  # the question varies across clips
    failed = instruct.ClipInstruction("x", None, None, None, False, "LLM output unparsable")
    with pytest.raises(ValueError, match="no description"):
        clip_record(items[0], failed)


# ------------------------------------------------------------------------------------------ faults, retries


@pytest.mark.parametrize("status", [408, 409, 429, 500, 503])
def test_retries_after_http_errors_then_succeeds(tmp_path, status):
    with ChatServer(fail_first=2, fail_status=status) as srv:
        gen = InstructionGenerator(config(srv), tmp_path)
        [r] = gen.clips([clip(0, TRANSCRIPTS[0])])
    assert r.kept and r.description and r.score is not None
    assert gen.stats == {**gen.stats, "requests": 4, "retries": 2, "failures": 0}
    assert len(srv.requests) == 4  # the openai client's retries are counted: every HTTP call is in the stats


def test_a_server_error_without_retry_after_is_retried_with_the_clients_backoff(tmp_path):
    with ChatServer(fail_first=1, fail_status=500, retry_after=None) as srv:
        gen = InstructionGenerator(config(srv), tmp_path)
        [r] = gen.clips([clip(0, TRANSCRIPTS[0])])
    assert r.kept and gen.stats == {**gen.stats, "requests": 3, "retries": 1, "failures": 0}
    assert len(srv.requests) == 3


def test_retry_after_header_is_honoured(tmp_path):
    # the client's own first backoff is at most 0.5 s: waiting 1 s or more means Retry-After was honoured
    with ChatServer(fail_first=1, fail_status=429, retry_after="1") as srv:
        gen = InstructionGenerator(config(srv), tmp_path)
        start = time.perf_counter()
        [r] = gen.clips([clip(0, TRANSCRIPTS[0])])
        elapsed = time.perf_counter() - start
    assert r.kept and gen.stats["retries"] == 1
    assert elapsed >= 1.0


def test_server_errors_exhaust_retries_into_a_reason(tmp_path):
    with ChatServer(fail_first=100, fail_status=503) as srv:
        gen = InstructionGenerator(config(srv, max_retries=2), tmp_path)
        [r] = gen.clips([clip(0, TRANSCRIPTS[0])])
    assert not r.kept and r.reason.startswith("LLM request failed after 2 retries: HTTP 503")
    assert gen.stats["requests"] == 3 and gen.stats["retries"] == 2 and gen.stats["failures"] == 1
    assert len(srv.requests) == 3


def test_transport_and_unparsable_retries_share_one_budget(tmp_path):
    """``max_retries`` is per item, whatever the cause: two 503s (the client's retries) and then prose
    (our re-ask) spend a budget of 3, and the item fails on the next bad answer."""
    with ChatServer(fail_first=2, fail_status=503, garbage_first=10**6) as srv:
        gen = InstructionGenerator(config(srv, max_retries=3), tmp_path)
        [v] = gen.videos([VideoContext("v", "v.mp4", "raw.mp4", "consistent with gout.", [], [])])
    assert not v.ok and v.reason.startswith("LLM output unparsable after 3 retries: no JSON object in output")
    assert gen.stats["requests"] == 4 and gen.stats["retries"] == 3 and len(srv.requests) == 4


def test_an_unreachable_endpoint_is_retried_then_named(tmp_path):
    from conftest import free_port

    cfg = LLMConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    [v] = InstructionGenerator(cfg, tmp_path).videos([VideoContext("v", "v.mp4", "raw.mp4", "gout.", [], [])])
    assert not v.ok and v.reason.startswith("LLM request failed after 1 retries: cannot reach http://127.0.0.1:")


def test_garbage_then_good_output(tmp_path):
    with ChatServer(garbage_first=2) as srv:
        gen = InstructionGenerator(config(srv), tmp_path)
        [r] = gen.clips([clip(0, TRANSCRIPTS[0])])
        [v] = gen.videos([VideoContext("v", "v.mp4", "raw.mp4", "consistent with gout.", [], [])])
    assert r.kept and r.score == score_of(TRANSCRIPTS[0])
    assert v.ok and v.diagnosis == "gout"
    # round 1 is plain text; round 2 got garbage twice, then JSON; the video JSON came at once
    assert gen.stats["retries"] == 2 and gen.stats["requests"] == 5 and gen.stats["failures"] == 0


def test_permanent_garbage_is_a_failure_reason_not_an_exception(tmp_path):
    with ChatServer(garbage_first=10**6) as srv:
        gen = InstructionGenerator(config(srv, max_retries=2), tmp_path)
        clips = gen.clips([clip(0, TRANSCRIPTS[0]), clip(1, TRANSCRIPTS[1])])
        [v] = gen.videos([VideoContext("v", "v.mp4", "raw.mp4", "consistent with gout.", [], [])])
    for r in clips:
        assert not r.kept and r.description  # round 1 (plain text) succeeded
        assert r.reason.startswith("LLM output unparsable after 2 retries: no JSON object in output")
        assert GARBAGE[:20] in r.reason
    assert not v.ok and v.answer is None and v.reason.startswith("LLM output unparsable after 2 retries")
    assert gen.stats["failures"] == 3 and gen.stats["retries"] == 6
    assert gen.stats["requests"] == 2 + 3 * 3
    assert len(list(tmp_path.glob("*.json"))) == 2  # only the two round-1 answers were cached


def test_wrong_api_key_is_a_clear_error_not_retried(tmp_path):
    with ChatServer(api_key="s3cret") as srv:
        gen = InstructionGenerator(config(srv, api_key="wrong"), tmp_path)
        with pytest.raises(ChatError, match=r"refused the API key \(HTTP 401\).*llm\.api_key"):
            gen.clips([clip(0, TRANSCRIPTS[0])])
        assert len(srv.requests) == 1 and gen.stats["retries"] == 0

        # many clips: the requests already in flight fail, no further one is sent
        gen = InstructionGenerator(config(srv, api_key="wrong", max_concurrency=2), tmp_path)
        with pytest.raises(ChatError, match="HTTP 401"):
            gen.clips([clip(i, TRANSCRIPTS[0]) for i in range(10)])
        assert gen.stats["requests"] <= 2 and gen.stats["retries"] == 0

        [r] = InstructionGenerator(config(srv, api_key="s3cret"), tmp_path).clips([clip(0, TRANSCRIPTS[0])])
        assert r.kept


def test_api_key_from_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("VIDRIP_LLM_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai-env")
    assert LLMConfig().resolved_api_key() == "from-openai-env"
    monkeypatch.setenv("VIDRIP_LLM_API_KEY", "s3cret")
    assert LLMConfig().resolved_api_key() == "s3cret"
    assert LLMConfig(api_key="explicit").resolved_api_key() == "explicit"
    with ChatServer(api_key="s3cret") as srv:
        [r] = InstructionGenerator(config(srv), tmp_path).clips([clip(0, TRANSCRIPTS[0])])
    assert r.kept
    monkeypatch.delenv("VIDRIP_LLM_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert LLMConfig().resolved_api_key() == "EMPTY"


def test_unknown_route_is_a_clear_error(server, tmp_path):
    cfg = LLMConfig(base_url=server.url)  # forgot the /v1
    with pytest.raises(ChatError, match=r"HTTP 404.*llm\.base_url"):
        InstructionGenerator(cfg, tmp_path).clips([clip(0, TRANSCRIPTS[0])])


def test_missing_base_url_names_the_config_key_and_env_vars(tmp_path, monkeypatch):
    monkeypatch.delenv("VIDRIP_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match=r"llm\.base_url.*VIDRIP_LLM_BASE_URL or OPENAI_BASE_URL"):
        InstructionGenerator(LLMConfig(), tmp_path)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert LLMConfig().resolved_base_url() == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("VIDRIP_LLM_BASE_URL", "http://127.0.0.1:8/v1/")
    assert LLMConfig().resolved_base_url() == "http://127.0.0.1:8/v1"
    assert LLMConfig(base_url="http://127.0.0.1:7/v1").resolved_base_url() == "http://127.0.0.1:7/v1"


def test_config_is_strict_and_bounded():
    with pytest.raises(ValidationError, match="base_ulr"):
        LLMConfig(base_ulr="http://127.0.0.1:1/v1")
    for bad in ({"min_quality": 6}, {"min_quality": -1}, {"max_concurrency": 0}, {"max_retries": -1}):
        with pytest.raises(ValidationError):
            LLMConfig(**bad)


# -------------------------------------------------------------------------------------- cache, concurrency


def test_rerun_with_the_same_cache_makes_no_requests(server, tmp_path):
    items = [clip(i, t) for i, t in enumerate(TRANSCRIPTS)]
    video = VideoContext("v", "v.mp4", "raw.mp4", "consistent with gout.", ["polarized light"], ["Crystals."])
    first = InstructionGenerator(config(server), tmp_path / "cache")
    results, videos = first.clips(items), first.videos([video])
    assert first.stats["requests"] == 9 and first.stats["cache_hits"] == 0
    assert len(list((tmp_path / "cache").glob("*.json"))) == 9
    assert not list((tmp_path / "cache").glob(".*.tmp"))

    seen = len(server.requests)
    again = InstructionGenerator(config(server), tmp_path / "cache")
    assert again.clips(items) == results and again.videos([video]) == videos
    assert len(server.requests) == seen
    assert again.stats["requests"] == 0 and again.stats["cache_hits"] == 9

    # a different model (or prompt version, or sampling setting) is a different key
    other = InstructionGenerator(config(server, model="other-llm"), tmp_path / "cache")
    other.clips(items[:1])
    assert other.stats["requests"] == 2 and other.stats["cache_hits"] == 0


def test_corrupt_cache_entry_is_asked_again(server, tmp_path):
    gen = InstructionGenerator(config(server), tmp_path)
    gen.videos([VideoContext("v", "v.mp4", "raw.mp4", "consistent with gout.", [], [])])
    [entry] = tmp_path.glob("*.json")
    entry.write_text("{not json")
    again = InstructionGenerator(config(server), tmp_path)
    [v] = again.videos([VideoContext("v", "v.mp4", "raw.mp4", "consistent with gout.", [], [])])
    assert v.ok and again.stats["requests"] == 1 and again.stats["cache_hits"] == 0


def test_concurrency_is_bounded(tmp_path):
    items = [clip(i, f"{TRANSCRIPTS[0]} Field {i}.") for i in range(8)]
    # the server holds the first 3 requests until 3 are in flight at once: only concurrent requests get past
    with ChatServer(hold_first=3) as srv:
        gen = InstructionGenerator(config(srv, max_concurrency=3), tmp_path)
        results = gen.clips(items)
    assert all(r.kept for r in results) and len(srv.requests) == 16
    assert srv.max_in_flight == 3  # the pool really overlaps its requests, and never sends more than 3


# ---------------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text",
    [
        '{"concise": "A lymph node.", "score": 4}',
        '```json\n{"concise": "A lymph node.", "score": 4}\n```',
        'Sure! Here it is:\n{"concise": "A lymph node.", "score": 4}\nHope this helps {:}',
        "{'concise': 'A lymph node.', 'score': 4}",
        '{"concise": "A lymph node.", "score": 4.4}',
        '{"concise": "A lymph node.", "score": "4/5"}',
    ],
)
def test_tolerant_parsing(text):
    assert instruct._parse_score_answer(text) == ("A lymph node.", 4)


@pytest.mark.parametrize(
    "text",
    [
        "",
        GARBAGE,
        '{"concise": "A lymph node."}',
        '{"concise": "", "score": 3}',
        '{"concise": "A lymph node.", "score": 7}',
        '{"concise": "A lymph node.", "score": -1}',
        '{"concise": "A lymph node.", "score": "high"}',
        '{"concise": "A lymph node.", "score": true}',
        '["not", "an", "object"]',
    ],
)
def test_unparsable_output(text):
    with pytest.raises(UnparsableOutput):
        instruct._parse_score_answer(text)


def test_score_rounding_and_cot_parsing():
    assert [parse_score(v) for v in (0, 2.5, 4.49, 5.2, "3", " 5 ")] == [0, 3, 4, 5, 3, 5]
    for bad in (5.6, -0.6, float("nan"), None, "five"):
        with pytest.raises(UnparsableOutput):
            parse_score(bad)
    assert parse_json_object('noise {"a": {"b": 1}} trailing') == {"a": {"b": 1}}
    text = '```\n{"description": "Sheets of cells.", "diagnosis": "Diagnosis: lymphoma"}\n```'
    assert instruct._parse_cot_answer(text) == ("Sheets of cells.", "lymphoma")


# ---------------------------------------------------------------------------------------- prompts, imports


def render_prompts() -> str:
    parts = [f"PROMPT_VERSION: {instruct.PROMPT_VERSION}"]
    for name in ("CLIP_SYSTEM_PROMPT", "CLIP_DESCRIBE_PROMPT", "CLIP_SCORE_PROMPT", "VIDEO_SYSTEM_PROMPT"):
        value = getattr(instruct, name)
        parts.append(f"===== {name} =====\n{getattr(value, 'template', value)}")
    parts.append(f"===== VIDEO_COT_PROMPT =====\n{instruct.VIDEO_COT_PROMPT.template}")
    parts.append("===== CLIP_QUESTIONS =====\n" + "\n".join(CLIP_QUESTIONS))
    parts.append(f"===== VIDEO_QUESTION =====\n{VIDEO_QUESTION}")
    return "\n\n".join(parts) + "\n"


def test_prompts_match_snapshot():
    """A prompt change must be a visible diff: update with VIDRIP_UPDATE_SNAPSHOTS=1 (and bump PROMPT_VERSION)."""
    text = render_prompts()
    if os.environ.get("VIDRIP_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.read_text() == text, f"prompts changed: rerun with VIDRIP_UPDATE_SNAPSHOTS=1 to update {SNAPSHOT}"


def test_prompts_ask_for_strict_json_where_json_is_parsed():
    for prompt in (instruct.CLIP_SCORE_PROMPT, instruct.VIDEO_COT_PROMPT.template):
        assert "strict JSON only" in prompt
    assert "JSON" not in instruct.CLIP_DESCRIBE_PROMPT.template
    assert "Never invent" in instruct.CLIP_SYSTEM_PROMPT and "never invent" in instruct.VIDEO_SYSTEM_PROMPT


def test_import_does_nothing(subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k not in ("VIDRIP_LLM_BASE_URL", "OPENAI_BASE_URL")}
    code = (
        "import sys, vidrip.curate.instruct as m; "
        "assert 'openai' not in sys.modules, 'openai imported at import time'; "
        "m.LLMConfig(); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_chat_server_speaks_the_openai_protocol(server):
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
    assert [m.id for m in client.models.list()] == [server.model]
    resp = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": 'Transcript:\n"""\nNests of nevus cells.\n"""'}]
    )
    assert resp.object == "chat.completion" and resp.usage.total_tokens > 0
    assert resp.choices[0].message.content == "The clip shows: Nests of nevus cells."
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "The clip shows: hello."
    client.close()
