"""The Ray Serve application: an API deployment (HTTP, checks, media) in front of a model deployment.

    app = build_app(ServeConfig(...))          # or serve_apps/vidrip_app.py:build_app for `serve run`
    serve.run(app, route_prefix="/")

``ApiServer`` (FastAPI ingress) authenticates, enforces every limit, loads media off the event loop and
calls ``ModelServer`` through a handle, choosing the adapter with ``multiplexed_model_id`` so Serve
routes the request to a replica that has it loaded. ``ModelServer`` batches requests
(``serve.batch``), loads adapters on demand and drops the least recently used (``serve.multiplexed``),
streams tokens, and fails its health check when the model cannot generate.

Routes: ``GET /`` (a page to try it), ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream`` too),
``GET /v1/samples`` (videos under the media root, for the page), ``GET /healthz``. Every error is OpenAI's
shape with its status; no stack trace reaches a client (each 500 carries an id that the log has). A
non-streamed reply about a video or image also says what the model was shown (``media``: frames and their
times), a field OpenAI clients ignore.
Research use only, not for clinical decisions.
"""

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from vidrip.serve.config import ServeConfig
from vidrip.serve.engine import Engine, GenRequest
from vidrip.serve.media import frame_policy, load_media
from vidrip.serve.protocol import APIError, ChatRequest, chunk, completion, error_body, new_stream_id
from vidrip.serve.structured import grammar_of

__all__ = ["RESEARCH_ONLY", "build_app", "model_server"]

log = logging.getLogger("vidrip.serve")
RESEARCH_ONLY = "Research use only, not for clinical decisions."
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}


def _param(loc: tuple) -> str:
    """``messages[0].content[1].video_url.url`` from pydantic's location, without its union labels."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, str) and ("[" in part or part == "str" or (i + 1 < len(loc) and loc[i + 1] == part)):
            continue  # a union member's label ("str", "list[...]") or a tagged union's tag before its field
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation_error(exc: ValidationError) -> APIError:
    """The most specific error (a union reports one per member; the deepest is the one that matters)."""
    error = max(exc.errors(), key=lambda e: len(e["loc"]))
    param = _param(error["loc"]) or None
    return APIError(400, f"{param or 'body'}: {error['msg']}", param=param)


def model_server(cfg: ServeConfig):
    """The model deployment's class, with this config's adapter cache size baked into ``serve.multiplexed``."""

    class Adapter:
        """A loaded adapter as ``serve.multiplexed`` sees it; evicting it unloads it from the model."""

        def __init__(self, engine: Engine, name: str):
            self.engine, self.name, self.alive = engine, name, True

        def __del__(self):
            if getattr(self, "alive", False):
                self.alive = False
                self.engine.unload_adapter(self.name)

    @serve.deployment(name="ModelServer")
    class ModelServer:
        def __init__(self, cfg_data: dict):
            from vidrip.runtime import apply_offline_env

            apply_offline_env()
            self.cfg = ServeConfig.model_validate(cfg_data)
            self.engine = Engine(self.cfg)
            self._batched.set_max_batch_size(self.cfg.batching.max_batch_size)
            self._batched.set_batch_wait_timeout_s(self.cfg.batching.batch_wait_timeout_s)

        async def info(self) -> dict:
            return {
                "image_size": self.engine.image_size,
                "loaded_adapters": self.engine.loaded_adapters,
                "pid": os.getpid(),
                "batch_sizes": dict(self.engine.batch_sizes),
            }

        @serve.multiplexed(max_num_models_per_replica=cfg.replicas.max_adapters_per_replica)
        async def adapter(self, name: str) -> Adapter:
            if name not in self.cfg.adapters:
                raise APIError(404, f"model: {name!r} is not served here", param="model", code="model_not_found")
            try:
                await asyncio.to_thread(self.engine.load_adapter, name)
            except Exception as exc:
                log.exception("adapter %s failed to load", name)
                raise APIError(
                    503,
                    f"model: {name!r} could not be loaded ({type(exc).__name__})",
                    type="server_error",
                    param="model",
                    code="model_unavailable",
                ) from None
            return Adapter(self.engine, name)

        async def _prepare(self, request: GenRequest) -> GenRequest:
            name = serve.get_multiplexed_model_id()
            if name:
                await self.adapter(name)
            request.adapter = name or None
            return request

        # Batches go to the engine as soon as they are sealed; it merges those that wait for the model.
        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02, max_concurrent_batches=64)
        async def _batched(self, requests: list[GenRequest]) -> list:
            futures = [asyncio.wrap_future(f) for f in self.engine.submit(requests)]
            return await asyncio.gather(*futures)

        async def generate(self, request: GenRequest) -> dict:
            reply = await self._batched(await self._prepare(request))
            if isinstance(reply, BaseException):
                raise reply
            return reply.__dict__

        async def stream(self, request: GenRequest):
            request = await self._prepare(request)
            pieces, done, stop = self.engine.stream(request)
            loop = asyncio.get_running_loop()
            sentinel = object()
            try:
                while (piece := await loop.run_in_executor(None, next, pieces, sentinel)) is not sentinel:
                    if piece:
                        yield {"text": piece}
                reply = await asyncio.wrap_future(done)
                yield {"reply": reply.__dict__}
            finally:
                stop.set()

        async def check_health(self) -> None:
            await asyncio.to_thread(self.engine.check)

    r = cfg.replicas
    return ModelServer.options(
        ray_actor_options={"num_cpus": r.num_cpus, "num_gpus": r.num_gpus},
        autoscaling_config={
            "min_replicas": r.min_replicas,
            "max_replicas": r.max_replicas,
            "target_ongoing_requests": r.target_ongoing_requests,
            "upscale_delay_s": r.upscale_delay_s,
            "downscale_delay_s": r.downscale_delay_s,
            "look_back_period_s": r.look_back_period_s,
        },
        max_ongoing_requests=r.max_ongoing_requests,
        health_check_period_s=r.health_check_period_s,
        health_check_timeout_s=r.health_check_timeout_s,
    )


api = FastAPI(
    title="vidrip",
    description="OpenAI-compatible chat completions over pathology videos and images. " + RESEARCH_ONLY,
    docs_url="/docs",
    redoc_url=None,
)


@serve.deployment(name="ApiServer")
@serve.ingress(api)
class ApiServer:
    def __init__(self, model: DeploymentHandle, cfg_data: dict):
        self.model = model
        self.cfg = ServeConfig.model_validate(cfg_data)
        self.key = self.cfg.resolved_api_key()
        if self.key is None:
            log.warning("no API key configured ($%s is not set here): this endpoint is open", self.cfg.api_key_env)
        self._image_size: int | None = None
        self._page = resources.files("vidrip.serve").joinpath("static/index.html").read_text()

    # plumbing ------------------------------------------------------------------------------------------
    def _auth(self, request: Request) -> None:
        if self.key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key.encode()):
            msg = "missing API key (send Authorization: Bearer <key>)" if not header else "incorrect API key"
            raise APIError(401, msg, code="invalid_api_key")

    async def _body(self, request: Request) -> bytes:
        limit = self.cfg.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise APIError(
                413, f"request body of {declared} bytes > limits.max_body_bytes ({limit})", code="body_too_large"
            )
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise APIError(413, f"request body > limits.max_body_bytes ({limit})", code="body_too_large")
        return bytes(body)

    @staticmethod
    def _error(exc: BaseException) -> JSONResponse:
        cause = getattr(exc, "cause", None)  # an APIError raised in the model deployment arrives wrapped by Ray
        if isinstance(cause, APIError):
            exc = cause
        if isinstance(exc, APIError):
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return JSONResponse(exc.body(), status_code=exc.status, headers=headers)
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return JSONResponse(
                error_body("the request took longer than limits.request_timeout_s", "timeout_error", code="timeout"),
                status_code=504,
            )
        ident = uuid.uuid4().hex[:12]
        log.error("internal error %s", ident, exc_info=exc)
        return JSONResponse(
            error_body(f"internal error (id {ident}); the server log has the details", "server_error"), status_code=500
        )

    async def _image_size_of_model(self) -> int:
        if self._image_size is None:
            self._image_size = (await self.model.info.remote())["image_size"]
        return self._image_size

    async def _to_generation(self, req: ChatRequest) -> GenRequest:
        limits = self.cfg.limits
        if req.model not in self.cfg.model_names():
            raise APIError(
                404,
                f"model: {req.model!r} is not served here; GET /v1/models lists {self.cfg.model_names()}",
                param="model",
                code="model_not_found",
            )
        budget = req.token_budget(min(limits.default_max_tokens, limits.max_tokens))
        if budget > limits.max_tokens:
            field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            raise APIError(400, f"{field}: {budget} > this endpoint's limit of {limits.max_tokens}", param=field)
        grammar = grammar_of(req.response_format)
        messages, media_parts = [], []
        for i, msg in enumerate(req.messages):
            if isinstance(msg.content, str):
                messages.append({"role": msg.role, "content": msg.content})
                continue
            parts = []
            for j, part in enumerate(msg.content):
                if part.type == "text":
                    parts.append({"type": "text", "text": part.text})
                    continue
                kind = "video" if part.type == "video_url" else "image"
                param = f"messages[{i}].content[{j}].{part.type}.url"
                if msg.role != "user":
                    raise APIError(400, f"{param}: images and videos go in user messages", param=param)
                media_parts.append((getattr(part, part.type).url, kind, param))
                parts.append({"type": kind})
            messages.append({"role": msg.role, "content": parts})
        if len(media_parts) > limits.max_media_parts:
            raise APIError(
                400,
                f"messages: {len(media_parts)} images/videos > limits.max_media_parts ({limits.max_media_parts})",
                param="messages",
            )
        media = None
        if media_parts:
            url, kind, param = media_parts[0]
            policy = frame_policy(self.cfg, req.media_io_kwargs)
            size = await self._image_size_of_model()
            media = await asyncio.to_thread(load_media, url, kind, self.cfg, param, size, policy)
        return GenRequest(
            messages=messages,
            media=media,
            max_tokens=budget,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            grammar=grammar,
        )

    def _handle(self, model: str, stream: bool = False):
        adapter = "" if model == self.cfg.served_name else model
        return self.model.options(multiplexed_model_id=adapter, stream=stream)

    # routes --------------------------------------------------------------------------------------------
    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self._page)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request):
        try:
            self._auth(request)
        except APIError as exc:
            return self._error(exc)
        now = int(time.time())
        data = [
            {"id": name, "object": "model", "created": now, "owned_by": "vidrip"} for name in self.cfg.model_names()
        ]
        return {"object": "list", "data": data}

    @api.get("/v1/samples")
    async def samples(self, request: Request):
        try:
            self._auth(request)
        except APIError as exc:
            return self._error(exc)
        root = self.cfg.media_root()
        found = (
            []
            if root is None
            else sorted(
                str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
            )
        )
        return {"object": "list", "data": found[:200]}

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        started = time.monotonic()
        timeout = self.cfg.limits.request_timeout_s
        try:
            self._auth(request)
            body = await self._body(request)
            try:
                data = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise APIError(400, "the request body is not valid JSON") from None
            if not isinstance(data, dict):
                raise APIError(400, "the request body must be a JSON object")
            try:
                req = ChatRequest.model_validate(data)
            except ValidationError as exc:
                raise _validation_error(exc) from None
            gen = await asyncio.wait_for(self._to_generation(req), timeout)
            if req.stream:
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                return StreamingResponse(
                    self._events(req.model, gen, include_usage, started + timeout),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            remaining = max(0.01, started + timeout - time.monotonic())
            response = self._handle(req.model).generate.remote(gen)
            try:
                reply = await asyncio.wait_for(response, remaining)
            except TimeoutError:
                response.cancel()
                raise
            out = completion(
                req.model, reply["text"], reply["finish_reason"], reply["prompt_tokens"], reply["completion_tokens"]
            )
            if gen.media is not None:
                out["media"] = gen.media.describe()  # a vidrip extension: what the model was shown
            return out
        except Exception as exc:
            return self._error(exc)

    async def _events(self, model: str, gen: GenRequest, include_usage: bool, deadline: float):
        ident, created = new_stream_id()

        def event(data: dict) -> str:
            return f"data: {json.dumps(data)}\n\n"

        stream = self._handle(model, stream=True).stream.remote(gen)
        try:
            yield event(chunk(ident, created, model, {"role": "assistant", "content": ""}))
            reply = None
            while True:
                try:
                    item = await asyncio.wait_for(stream.__anext__(), max(0.01, deadline - time.monotonic()))
                except StopAsyncIteration:
                    break
                if "text" in item:
                    yield event(chunk(ident, created, model, {"content": item["text"]}))
                else:
                    reply = item["reply"]
            finish = reply["finish_reason"] if reply else "stop"
            yield event(chunk(ident, created, model, {}, finish_reason=finish))
            if include_usage and reply:
                usage = {
                    "prompt_tokens": reply["prompt_tokens"],
                    "completion_tokens": reply["completion_tokens"],
                    "total_tokens": reply["prompt_tokens"] + reply["completion_tokens"],
                }
                yield event(chunk(ident, created, model, {}, usage=usage))
            yield "data: [DONE]\n\n"
        except Exception as exc:
            stream.cancel()
            body = json.loads(self._error(exc).body)
            yield event(body)
        finally:
            stream.cancel()


def build_app(cfg: ServeConfig):
    """The application: ``ApiServer`` bound to ``ModelServer``; fails early when a required key is missing."""
    cfg.resolved_api_key()
    data = cfg.model_dump()
    r = cfg.replicas
    api_server = ApiServer.options(
        num_replicas=r.api_replicas,
        ray_actor_options={"num_cpus": r.api_num_cpus},
        max_ongoing_requests=r.api_max_ongoing_requests,
    )
    return api_server.bind(model_server(cfg).bind(data), data)
