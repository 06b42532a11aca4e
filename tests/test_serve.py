"""The Serve app for real: `serve.run` on the session's Ray head, real HTTP, the real `openai` client.

Two applications share the cluster: ``strict`` at ``/`` (defaults: http(s) media only from public
addresses) and ``lab`` at ``/lab`` (media may come from 127.0.0.1, two model replicas, a short request
timeout). Media servers run on loopback only; the address refusals are tested with loopback spellings
alone, so even a broken guard sends nothing off this machine.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest

from conftest import free_port
from serve_models import make_adapter, make_base, make_video

pytestmark = pytest.mark.integration

KEY = "test-key-0123456789"
QUESTION = "What tissue is shown?"
URL_PARAM = "messages[0].content[0].video_url.url"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    base = make_base(root / "base")
    return {"base": base, "a1": make_adapter(base, root / "a1", seed=1), "a2": make_adapter(base, root / "a2", seed=2)}


@pytest.fixture(scope="module")
def registry(models, tmp_path_factory) -> str:
    """An MLflow store where adapter a2 is version 1 of `vidrip-video`, alias `champion`: the apps load it by alias."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.create_run(client.create_experiment("serve-test"))
    client.create_registered_model("vidrip-video")
    version = client.create_model_version("vidrip-video", source=str(models["a2"]), run_id=run.info.run_id)
    client.set_registered_model_alias("vidrip-video", "champion", version.version)
    return uri


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("media")
    root = top / "root"
    (root / "cases").mkdir(parents=True)
    make_video(root / "cases" / "clip.mp4", seconds=2.0)
    make_video(root / "long.mp4", seconds=6.0)
    make_video(root / "wide.mp4", seconds=1.0, size=(240, 320))
    (root / "text.mp4").write_text("not a video\n" * 20)
    (top / "outside").mkdir()
    shutil.copy(root / "cases" / "clip.mp4", top / "outside" / "secret.mp4")
    (root / "escape.mp4").symlink_to(top / "outside" / "secret.mp4")
    (root / "big.bin").write_bytes(os.urandom(300_000))
    return root


@dataclass
class MediaServer:
    url: str  # on 127.0.0.1
    other_url: str  # on 127.0.0.2: must never be reached
    other_hits: list


def _server(host: str, root: Path, hits: list, redirect_to: str = "") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            if self.path == "/redirect-out":
                self.send_response(302)
                self.send_header("Location", redirect_to)
                self.end_headers()
                return
            if self.path == "/redirect-in":
                self.send_response(302)
                self.send_header("Location", "/cases/clip.mp4")
                self.end_headers()
                return
            if self.path == "/stall":
                time.sleep(6)
            target = root / self.path.lstrip("/")
            if self.path == "/stall":
                target = root / "cases" / "clip.mp4"
            if not target.is_file():
                self.send_response(404)
                self.end_headers()
                return
            data = target.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer((host, free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def media_server(media):
    other_hits: list = []
    other = _server("127.0.0.2", media, other_hits)
    other_url = f"http://127.0.0.2:{other.server_address[1]}"
    main = _server("127.0.0.1", media, [], redirect_to=f"{other_url}/cases/clip.mp4")
    yield MediaServer(f"http://127.0.0.1:{main.server_address[1]}", other_url, other_hits)
    for s in (main, other):
        s.shutdown()
        s.server_close()


@dataclass
class Endpoint:
    url: str
    port: int

    def client(self, app: str = "", key: str | None = KEY, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}{app}/v1", api_key=key or "none", timeout=120, **kw)


def _config(models, media_root, registry, **update):
    from vidrip.serve.config import ServeConfig

    data = {
        "model": {"checkpoint": str(models["base"])},
        "adapters": {"a1": str(models["a1"]), "a2": "models:/vidrip-video@champion", "broken": str(media_root)},
        "tracking_uri": registry,
        "media": {"root": str(media_root)},
        "limits": {
            "max_body_bytes": 1_000_000,
            "max_media_bytes": 200_000,
            "max_video_seconds": 4.0,
            "max_pixels": 200 * 200,
            "max_tokens": 64,
            "default_max_tokens": 8,
        },
        "api_key": KEY,
        "replicas": {"num_cpus": 0.3, "api_num_cpus": 0.05, "max_adapters_per_replica": 1},
    }
    for key, value in update.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return ServeConfig.model_validate(data)


@pytest.fixture(scope="module")
def endpoint(ray_head, models, media, registry):
    import ray
    from ray import serve

    from vidrip.runtime import connect
    from vidrip.serve.app import build_app

    connect(ray_head.config, ray_head.workdir)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    strict = _config(models, media, registry)
    lab = _config(
        models,
        media,
        registry,
        media={"allow_networks": ["127.0.0.1/32"]},
        limits={"request_timeout_s": 3.0, "fetch_timeout_s": 10.0},
        replicas={"min_replicas": 2, "max_replicas": 2},
    )
    serve.run(build_app(strict), name="strict", route_prefix="/")
    serve.run(build_app(lab), name="lab", route_prefix="/lab")
    yield Endpoint(f"http://127.0.0.1:{port}", port)
    serve.shutdown()
    ray.shutdown()


def _video_message(url: str, question: str = QUESTION) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}],
        }
    ]


def _ask(client: openai.OpenAI, model: str, url: str, **kw):
    kw.setdefault("max_tokens", 8)
    return client.chat.completions.create(model=model, messages=_video_message(url), **kw)


def _reference(checkpoint: Path, video: Path, max_tokens: int = 8, policy=None) -> str:
    """The same question answered in this process, frames sampled as in training (or by ``policy``)."""
    from vidrip.data.video import FramePolicy, read_frames
    from vidrip.model.generate import answer
    from vidrip.model.loading import ModelConfig, load_model, load_processor

    cfg = ModelConfig(checkpoint=str(checkpoint))
    model, processor = load_model(cfg), load_processor(cfg)
    frames = read_frames(video, policy or FramePolicy(), size=64).array
    return answer(model, processor, QUESTION, frames=frames, max_new_tokens=max_tokens).text


def test_models_list_and_api_key(endpoint):
    names = [m.id for m in endpoint.client().models.list().data]
    assert names == ["vidrip-base", "a1", "a2", "broken"]
    for key in (None, "wrong-key"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.get(f"{endpoint.url}/v1/models", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        endpoint.client(key="wrong-key").chat.completions.create(
            model="a1", messages=[{"role": "user", "content": "hi"}]
        )
    assert httpx.get(f"{endpoint.url}/healthz").json() == {"status": "ok"}
    page = httpx.get(f"{endpoint.url}/")
    assert page.status_code == 200 and "Research use only, not for clinical decisions." in page.text


def test_answers_equal_the_checkpoints_own_from_every_media_source(endpoint, models, media, media_server):
    """Base and both adapters (a2 loaded through the registry alias; one adapter slot per replica: every
    switch evicts and reloads) answer as their checkpoints do in-process, whether the video comes as a
    path, a data: URL or over http."""
    clip = media / "cases" / "clip.mp4"
    data_url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    expected = {
        name: _reference(models[key], clip) for name, key in (("vidrip-base", "base"), ("a1", "a1"), ("a2", "a2"))
    }
    assert len(set(expected.values())) == 3, "the adapters must answer differently from the base and each other"
    strict, lab = endpoint.client(), endpoint.client("/lab")
    for name in ("a1", "a2", "vidrip-base", "a1", "a2"):
        reply = _ask(strict, name, "cases/clip.mp4")
        assert reply.choices[0].message.content == expected[name], name
        assert reply.model == name
        assert reply.usage.completion_tokens >= 1
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert _ask(strict, "a1", data_url).choices[0].message.content == expected["a1"]
    assert _ask(lab, "a1", f"{media_server.url}/cases/clip.mp4").choices[0].message.content == expected["a1"]
    assert _ask(lab, "a2", f"{media_server.url}/redirect-in").choices[0].message.content == expected["a2"]


def test_a_request_may_ask_for_uniform_frames_as_in_the_papers_evaluation(endpoint, models, media):
    """vLLM's ``media_io_kwargs``: 5 uniform frames of a 2 s clip instead of the endpoint's 1 per second."""
    from vidrip.data.video import FramePolicy

    clip = media / "cases" / "clip.mp4"
    client = endpoint.client()
    usual = _ask(client, "a1", "cases/clip.mp4")
    asked = _ask(client, "a1", "cases/clip.mp4", extra_body={"media_io_kwargs": {"video": {"num_frames": 5}}})
    assert usual.model_extra["media"]["frames"] == 2 and asked.model_extra["media"]["frames"] == 5
    stamps = asked.model_extra["media"]["frame_timestamps"]
    assert stamps[0] == 0 and stamps == sorted(stamps) and stamps[-1] > 1.5
    assert asked.usage.prompt_tokens > usual.usage.prompt_tokens
    expected = _reference(models["a1"], clip, policy=FramePolicy(rule="uniform", num_frames=5))
    assert asked.choices[0].message.content == expected
    capped = {"media_io_kwargs": {"video": {"fps": 2, "num_frames": 3}}}
    by_fps = _ask(client, "a1", "cases/clip.mp4", extra_body=capped)
    assert by_fps.model_extra["media"]["frames"] == 3


SCORE_SCHEMA = {
    "type": "object",
    "properties": {
        "description": {"type": "string", "maxLength": 24},
        "score": {"type": "integer", "minimum": 0, "maximum": 5},
    },
    "required": ["description", "score"],
    "additionalProperties": False,
}


def _follows_score_schema(text: str) -> bool:
    reply = json.loads(text)
    return (
        set(reply) == {"description", "score"}
        and isinstance(reply["description"], str)
        and len(reply["description"]) <= 24
        and type(reply["score"]) is int
        and 0 <= reply["score"] <= 5
    )


def test_response_format_makes_even_random_weights_answer_in_the_schema(endpoint):
    """OpenAI's ``response_format``: the tiny model's random weights answer free text that is no JSON, and
    JSON that follows the schema when asked for it (batched, streamed, with a video, as ``json_object``)."""
    client = endpoint.client()
    schema = {"type": "json_schema", "json_schema": {"name": "score", "schema": SCORE_SCHEMA, "strict": True}}
    free = _ask(client, "a1", "cases/clip.mp4", max_tokens=64).choices[0].message.content
    with pytest.raises(json.JSONDecodeError):
        json.loads(free)
    with ThreadPoolExecutor(4) as pool:
        replies = list(
            pool.map(
                lambda q: client.chat.completions.create(
                    model="a1", messages=_video_message("cases/clip.mp4", q), max_tokens=64, response_format=schema
                ),
                ["What tissue?", "Which stain?", "Any tumour?", "Grade?"],
            )
        )
    assert all(r.choices[0].finish_reason == "stop" for r in replies)
    assert all(_follows_score_schema(r.choices[0].message.content) for r in replies), [
        r.choices[0].message.content for r in replies
    ]
    anything = client.chat.completions.create(
        model="a1", messages=[{"role": "user", "content": "hi"}], max_tokens=64, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(anything.choices[0].message.content), dict)
    streamed = client.chat.completions.create(
        model="a1", messages=_video_message("cases/clip.mp4"), max_tokens=64, response_format=schema, stream=True
    )
    assert _follows_score_schema("".join(c.choices[0].delta.content or "" for c in streamed if c.choices))


def test_an_adapter_that_cannot_load_is_a_503_and_the_others_still_answer(endpoint):
    r = _post(endpoint, _chat("hi") | {"model": "broken"})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "model_unavailable" and r.json()["error"]["param"] == "model"
    assert "Traceback" not in r.text
    assert _ask(endpoint.client(), "a1", "cases/clip.mp4").usage.completion_tokens >= 1


def test_same_seed_same_answer(endpoint):
    client = endpoint.client()
    ask = lambda seed: _ask(client, "a1", "cases/clip.mp4", temperature=1.0, seed=seed).choices[0].message.content  # noqa: E731
    first = ask(7)
    assert ask(7) == first
    assert {ask(s) for s in (1, 2, 3)} != {first}


def test_streaming_yields_well_formed_events(endpoint):
    body = {"model": "a2", "messages": _video_message("cases/clip.mp4"), "max_tokens": 8}
    plain = endpoint.client().chat.completions.create(**body).choices[0].message.content
    headers = {"Authorization": f"Bearer {KEY}"}
    events = []
    with httpx.stream(
        "POST",
        f"{endpoint.url}/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        headers=headers,
        timeout=60,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    blocks = [b for b in raw.split("\n\n") if b.strip()]
    assert blocks[-1] == "data: [DONE]"
    for block in blocks[:-1]:
        assert block.startswith("data: ")
        events.append(json.loads(block.removeprefix("data: ")))
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert text == plain
    assert [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]] == ["length"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 8
    # and the openai client reads the same stream
    streamed = endpoint.client().chat.completions.create(**body, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == plain


def _post(endpoint, payload, app: str = "", raw: bytes | None = None, key: str = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    content = raw if raw is not None else json.dumps(payload).encode()
    return httpx.post(f"{endpoint.url}{app}/v1/chat/completions", content=content, headers=headers, timeout=60)


def _chat(content, **kw) -> dict:
    return {"model": "a1", "messages": [{"role": "user", "content": content}], **kw}


def _video(url: str) -> list[dict]:
    return [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": QUESTION}]


BAD_REQUESTS = {
    "not json": (None, b"{not json", 400, None),
    "no messages": ({"model": "a1"}, None, 400, "messages"),
    "empty messages": ({"model": "a1", "messages": []}, None, 400, "messages"),
    "unknown model": (_chat("hi") | {"model": "gpt-9"}, None, 404, "model"),
    "max_tokens over the limit": (_chat("hi", max_tokens=65), None, 400, "max_tokens"),
    "temperature out of range": (_chat("hi", temperature=3), None, 400, "temperature"),
    "n > 1": (_chat("hi", n=2), None, 400, "n"),
    "unknown part type": (
        _chat([{"type": "audio_url", "audio_url": {"url": "x"}}]),
        None,
        400,
        "messages[0].content[0]",
    ),
    "video url missing": (
        _chat([{"type": "video_url", "video_url": {}}]),
        None,
        400,
        URL_PARAM,
    ),
    "media in an assistant turn": (
        {"model": "a1", "messages": [{"role": "assistant", "content": _video("cases/clip.mp4")}]},
        None,
        400,
        URL_PARAM,
    ),
    "two videos": (_chat(_video("cases/clip.mp4") + _video("cases/clip.mp4")), None, 400, "messages"),
    "more frames than the limit": (
        _chat(_video("cases/clip.mp4"), media_io_kwargs={"video": {"num_frames": 33}}),
        None,
        400,
        "media_io_kwargs.video.num_frames",
    ),
    "misspelt frame option": (
        _chat(_video("cases/clip.mp4"), media_io_kwargs={"video": {"num_frame": 8}}),
        None,
        400,
        "media_io_kwargs.video.num_frame",
    ),
    "schema that cannot be enforced": (
        _chat("hi", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}),
        None,
        400,
        "response_format.json_schema.schema",
    ),
    "json_schema without its schema": (
        _chat("hi", response_format={"type": "json_schema"}),
        None,
        400,
        "response_format.json_schema",
    ),
    "body too large": (_chat("x" * 1_100_000), None, 413, None),
    "media too large": (_chat(_video("big.bin")), None, 413, URL_PARAM),
    "video too long": (_chat(_video("long.mp4")), None, 400, URL_PARAM),
    "resolution too high": (_chat(_video("wide.mp4")), None, 400, URL_PARAM),
    "not a video": (_chat(_video("text.mp4")), None, 400, URL_PARAM),
    "data url not base64": (_chat(_video("data:video/mp4,abc")), None, 400, URL_PARAM),
    "bad base64": (_chat(_video("data:video/mp4;base64,@@@")), None, 400, URL_PARAM),
    "unsupported scheme": (_chat(_video("ftp://127.0.0.1/a.mp4")), None, 400, URL_PARAM),
    "missing file": (_chat(_video("cases/nope.mp4")), None, 404, URL_PARAM),
    "dot-dot": (_chat(_video("../outside/secret.mp4")), None, 403, URL_PARAM),
    "dot-dot inside": (
        _chat(_video("cases/../../outside/secret.mp4")),
        None,
        403,
        URL_PARAM,
    ),
    "absolute path": (_chat(_video("/etc/hostname")), None, 403, URL_PARAM),
    "file url": (_chat(_video("file:///etc/hostname")), None, 403, URL_PARAM),
    "symlink escape": (_chat(_video("escape.mp4")), None, 403, URL_PARAM),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_their_status_in_openais_shape(endpoint, case):
    payload, raw, status, param = BAD_REQUESTS[case]
    r = _post(endpoint, payload, raw=raw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
        assert error["message"].startswith(param), error["message"]
    assert "Traceback" not in r.text and 'File "' not in r.text


# Every one of these names a loopback address; the strict app must refuse them all before connecting.
LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.0.0.2",
    "[::1]",
    "2130706433",
    "0x7f.1",
    "127.1",
    "localhost",
    "localhost.",
    "LOCALHOST",
    "a.localhost",
    "[::ffff:127.0.0.1]",
    "0177.0.0.1",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_loopback_media_urls_are_refused_by_default(endpoint, media_server, host):
    port = media_server.url.rsplit(":", 1)[1]
    r = _post(endpoint, _chat(_video(f"http://{host}:{port}/cases/clip.mp4")))
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "media_forbidden"
    assert "loopback" in r.json()["error"]["message"]


def test_a_redirect_to_a_refused_address_is_refused(endpoint, media_server):
    r = _post(endpoint, _chat(_video(f"{media_server.url}/redirect-out")), app="/lab")
    assert r.status_code == 403, r.text
    assert "127.0.0.2" in r.json()["error"]["message"]
    assert media_server.other_hits == []


def test_a_stalled_media_server_times_out_the_request(endpoint, media_server):
    r = _post(endpoint, _chat(_video(f"{media_server.url}/stall")), app="/lab")  # the server stalls 6 s
    assert r.status_code == 504, r.text  # the lab app's limit is 3 s
    assert r.json()["error"]["code"] == "timeout"


def test_32_concurrent_requests_all_succeed(endpoint):
    client = endpoint.client(max_retries=0)

    def one(i: int) -> str:
        model = ("vidrip-base", "a1")[i % 2]
        return _ask(client, model, "cases/clip.mp4", max_tokens=4).choices[0].finish_reason

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    assert len(results) == 32 and set(results) <= {"stop", "length"}


def test_a_killed_replica_is_replaced_and_the_endpoint_keeps_answering(endpoint):
    from ray import serve

    handle = serve.get_deployment_handle("ModelServer", app_name="lab")
    pids = set()
    for _ in range(40):
        pids.add(handle.info.remote().result()["pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    client = endpoint.client("/lab")
    for _ in range(6):
        assert client.chat.completions.create(model="a1", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = serve.status().applications["lab"].deployments["ModelServer"]
        now = {handle.info.remote().result()["pid"] for _ in range(10)}
        if status.status == "HEALTHY" and victim not in now and len(now) == 2:
            break
        time.sleep(2)
    else:
        pytest.fail(f"the killed replica was not replaced: {status}")


def test_the_health_check_fails_when_the_model_cannot_generate(models):
    from vidrip.serve.config import ServeConfig
    from vidrip.serve.engine import Engine

    engine = Engine(ServeConfig(model={"checkpoint": str(models["base"])}))
    engine.check()
    engine.model.lm_head = None  # the model can no longer produce logits
    with pytest.raises(RuntimeError, match="cannot generate"):
        engine.check()
    engine.close()


def test_the_page_answers_a_sample_video_in_chromium(endpoint, tmp_path):
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "page.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        page = browser.new_page()
        page.goto(f"{endpoint.url}/")
        page.fill("#key", KEY)
        page.press("#key", "Tab")  # the key's change event loads the models and the sample list
        page.wait_for_function("document.querySelector('#status').textContent === 'ready'")
        page.select_option("#model", "a1")
        page.select_option("#sample", "cases/clip.mp4")
        page.click("#ask")
        page.wait_for_function("document.querySelector('#status').textContent === 'done'", timeout=60_000)
        answer = page.text_content("#answer")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    question = "Describe the tissue and give a diagnosis."  # the page's default question
    reply = endpoint.client().chat.completions.create(model="a1", messages=_video_message("cases/clip.mp4", question))
    assert answer == reply.choices[0].message.content and answer.strip()
    assert shot.stat().st_size > 1000
    print(f"screenshot: {shot}")


def test_a_required_key_that_is_missing_stops_the_build(models, monkeypatch):
    from vidrip.serve.app import build_app
    from vidrip.serve.config import ServeConfig

    monkeypatch.delenv("VIDRIP_API_KEY", raising=False)
    with pytest.raises(ValueError, match=r"require_api_key: .*\$VIDRIP_API_KEY"):
        build_app(ServeConfig(model={"checkpoint": str(models["base"])}, require_api_key=True))


def test_a_slow_client_does_not_stall_the_others(endpoint):
    """A client that sends its headers and then trickles its body keeps its connection; the others are answered."""
    import socket

    slow = socket.create_connection(("127.0.0.1", endpoint.port))
    try:
        slow.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: 5000\r\n\r\n".encode()
            + b'{"model": "a1", '
        )
        client = endpoint.client(max_retries=0)
        for _ in range(3):
            slow.sendall(b" ")
            reply = client.chat.completions.create(
                model="a1", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert reply.usage.completion_tokens >= 1
    finally:
        slow.close()


def _engine(models, **batching):
    from vidrip.serve.config import ServeConfig
    from vidrip.serve.engine import Engine

    return Engine(ServeConfig(model={"checkpoint": str(models["base"])}, batching=batching))


def test_batches_that_wait_for_the_model_are_merged(models, monkeypatch):
    from vidrip.serve.engine import GenRequest

    engine = _engine(models, max_batch_size=16, fill_wait_s=0)
    ask = lambda n, tokens: [  # noqa: E731
        GenRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=tokens) for _ in range(n)
    ]
    # the first generation is held on the model thread until both later lists are in: however fast the model
    # is, they arrive while it is busy (what the test is about), not after it finished
    busy, release, generate_group = threading.Event(), threading.Event(), engine._generate_group

    def held_first(group):
        if not busy.is_set():
            busy.set()
            release.wait(timeout=120)
        return generate_group(group)

    monkeypatch.setattr(engine, "_generate_group", held_first)
    try:
        first = engine.submit(ask(1, 64))
        assert busy.wait(timeout=120)  # the model is generating the first request
        waiting = engine.submit(ask(3, 4)) + engine.submit(ask(3, 4))
        release.set()
        replies = [f.result() for f in first + waiting]
        assert all(r.completion_tokens == (64 if i == 0 else 4) for i, r in enumerate(replies))
        assert dict(engine.batch_sizes) == {1: 1, 6: 1}
    finally:
        engine.close()


def test_requests_batch_only_with_the_same_response_format(models):
    from vidrip.serve.engine import GenRequest

    engine = _engine(models, max_batch_size=16, fill_wait_s=0)
    schema = json.dumps(SCORE_SCHEMA, sort_keys=True)
    flag = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    ask = lambda text, grammar: GenRequest(  # noqa: E731
        messages=[{"role": "user", "content": text}], max_tokens=64, grammar=grammar
    )
    try:
        replies = engine.generate([ask("a", schema), ask("b", None), ask("c", schema), ask("d", flag)])
        assert dict(engine.batch_sizes) == {2: 1, 1: 2}
        assert _follows_score_schema(replies[0].text) and _follows_score_schema(replies[2].text)
        assert isinstance(json.loads(replies[3].text)["ok"], bool)
    finally:
        engine.close()


def test_an_idle_model_does_not_wait_to_fill_a_batch(models):
    from vidrip.serve.engine import GenRequest

    engine = _engine(models, max_batch_size=16, fill_wait_s=600)
    try:
        future = engine.submit([GenRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=2)])[0]
        assert future.result(timeout=120).completion_tokens == 2  # far less than the 600 s fill wait
    finally:
        engine.close()
