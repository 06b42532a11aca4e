"""Asking an OpenAI-compatible chat endpoint robustly: retries, a disk cache, bounded concurrency.

Shared by curation's instruction generator and evaluation's predictions and judge. Works against any
server that speaks chat completions (OpenAI, vLLM, the platform's own Ray Serve app, a test server on
loopback)::

    chat = ChatClient(base_url="http://127.0.0.1:8000/v1", api_key="EMPTY", cache_dir="work/cache",
                      setting="judge", what="judge")
    score = chat.complete({"model": "m", "messages": [...], "temperature": 0, "max_tokens": 64}, parse)
    scores = chat.map(lambda item: ..., items)      # at most ``max_concurrency`` requests in flight
    chat.stats   # {"requests", "cache_hits", "retries", "failures", "skipped", "prompt_tokens", ...}

Transport retries are the ``openai`` client's own: HTTP 408/409/429/5xx, connection errors and timeouts,
with its exponential backoff (with jitter) and the server's ``retry-after-ms`` / ``Retry-After`` (a wait
longer than the client accepts, 2 minutes, is not waited for: the item fails). What is ours is what the
client cannot know: an answer that ``parse`` rejects (:class:`UnparsableOutput`) is asked again at once;
both kinds of retry share one budget per item, ``max_retries``, and ``stats["retries"]`` counts both. An
item that gives up raises :class:`ItemFailed` with its reason; a refused key or an unknown model (HTTP
401/403/404) raises :class:`ChatError`, since no item can succeed, and stops ``map``.

Every parsed answer is cached, one JSON file per request, keyed by the request itself (model, messages,
sampling, extra body) and whatever else the caller says decides the answer (a prompt version, a video's
content hash). With ``remember_unparsable`` an answer that never parsed is cached as such, so a re-run
does not pay for it again (a deterministic judge gives the same bad answer twice); transport failures are
never cached. The same request made twice at once is asked once.

Nothing happens at import time: ``openai`` is imported when the first request is made.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ChatClient",
    "ChatError",
    "DiskCache",
    "ItemFailed",
    "UnparsableOutput",
    "cache_key",
    "parse_json_object",
    "parse_score",
    "short",
    "unfence",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class ChatError(RuntimeError):
    """The endpoint cannot serve any request (unreachable at check time, key refused, model unknown)."""


class UnparsableOutput(ValueError):
    """An answer that does not have the shape asked for."""


class ItemFailed(Exception):
    """One request gave up after its retries; the message is the reason."""


class _Failed(Exception):
    """One call that brought no answer, after the client's ``retries``; ``again``: worth asking again
    (a body that is no chat completion), else the client gave up (its retries spent, or not retryable)."""

    def __init__(self, message: str, retries: int, again: bool = False):
        super().__init__(message)
        self.retries, self.again = retries, again


# -------------------------------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|python)?[ \t]*\n?(.*?)```", re.DOTALL)
_SCORE_TEXT = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(?:/\s*5)?\s*$")


def short(text: str, n: int = 120) -> str:
    """``text`` on one line, cut to ``n`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def unfence(text: str) -> str:
    """``text`` without the code fence around all of it, if there is one."""
    text = text.strip()
    fenced = _FENCE.fullmatch(text)
    return fenced.group(1).strip() if fenced else text


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
    raise UnparsableOutput(f"no JSON object in output: {short(text)!r}")


def parse_score(value: Any) -> int:
    """A 0–5 score from an int, a float (rounded half up) or a numeric string (``"4"``, ``"4/5"``)."""
    if isinstance(value, str) and (m := _SCORE_TEXT.match(value)):
        value = float(m.group(1))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UnparsableOutput(f"score is not a number: {value!r}")
    score = math.floor(value + 0.5)
    if not 0 <= score <= 5:
        raise UnparsableOutput(f"score {value!r} is outside 0..5")
    return int(score)


# ---------------------------------------------------------------------------------------------------- cache


def cache_key(request: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """sha256 of everything that decides the answer: the request (model, messages, sampling, extra body)
    and what the caller adds (a prompt version, a media file's content hash)."""
    blob = json.dumps({"request": request, "extra": extra or {}}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class DiskCache:
    """One JSON file per key; written to a temporary file and renamed, so a reader never sees half a file."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cache entry %s unreadable (%s): asking again", path, exc)
            return None
        return entry if isinstance(entry, dict) and isinstance(entry.get("content"), str) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f, ensure_ascii=False, indent=1)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# --------------------------------------------------------------------------------------------------- client

_STATS = ("requests", "cache_hits", "retries", "failures", "skipped", "prompt_tokens", "completion_tokens")


class ChatClient:
    """Chat completions from one endpoint, cached on disk, ``max_concurrency`` at once (see module docstring).

    ``setting`` names the config section in error messages (``llm``, ``judge``, ``models[0]``); ``what``
    names the endpoint in failure reasons (``LLM``, ``judge``); ``key_hint`` says where a key is set.
    ``stats``: ``requests`` (HTTP calls made, the client's retries included), ``cache_hits``, ``retries``
    (the client's transport retries and our re-asks), ``prompt_tokens``, ``completion_tokens``, and
    ``failures`` / ``skipped`` as the caller counts them with :meth:`count`. ``timeout_s`` bounds each HTTP
    call; ``max_retries`` is each item's budget of retries, whatever their cause.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        cache_dir: str | Path,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        max_concurrency: int = 4,
        setting: str = "llm",
        what: str = "LLM",
        key_hint: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.cache = DiskCache(cache_dir)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.setting, self.what = setting, what
        self.key_hint = key_hint or f"'{setting}.api_key'"
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._client: Any = None

    @classmethod
    def for_section(cls, section: Any, *, base_url: str, api_key: str, cache_dir: str | Path, **names) -> ChatClient:
        """A client with a config section's ``timeout_s``, ``max_retries`` and ``max_concurrency``;
        ``names``: ``setting``, ``what``, ``key_hint``."""
        return cls(
            base_url=base_url,
            api_key=api_key,
            cache_dir=cache_dir,
            timeout_s=section.timeout_s,
            max_retries=section.max_retries,
            max_concurrency=section.max_concurrency,
            **names,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    def map(self, fn: Callable[[T], R], items: list[T], desc: str | None = None) -> list[R]:
        """``fn`` over ``items`` on ``max_concurrency`` threads, in input order (a progress bar on the
        console when ``desc`` is given). A :class:`ChatError` stops what has not started and is raised."""
        from tqdm import tqdm

        if not items:
            return []
        fatal: list[ChatError] = []

        def run(item: T) -> R:
            if fatal:  # the endpoint refused us: no more requests
                raise fatal[0]
            try:
                return fn(item)
            except ChatError as exc:
                fatal.append(exc)
                raise

        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items)), thread_name_prefix="vidrip-chat")
        bar = tqdm(total=len(items), desc=desc, unit="request", disable=desc is None, leave=False)
        try:
            futures = [pool.submit(run, item) for item in items]
            for f in futures:
                f.add_done_callback(lambda _: bar.update())
            return [f.result() for f in futures]
        finally:  # on ChatError: drop what has not started, let running requests finish
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()

    def complete(
        self,
        request: dict[str, Any],
        parse: Callable[[str], T],
        *,
        cache_extra: dict[str, Any] | None = None,
        key_request: dict[str, Any] | None = None,
        remember_unparsable: bool = False,
    ) -> T:
        """The parsed answer to ``request`` (keyword arguments of ``chat.completions.create``): from the
        cache, else asked with retries. Raises :class:`ItemFailed` when it gives up.

        ``key_request``: the request as the cache sees it, when the real one carries bulk that a digest
        stands for (an inlined video); ``cache_extra``: what else decides the answer."""
        shown = key_request if key_request is not None else request
        key = cache_key(shown, cache_extra)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # the same request twice at once is asked once; the second finds it in the cache
            return self._complete(request, parse, key, shown, cache_extra, remember_unparsable)

    def _complete(self, request, parse, key, shown, cache_extra, remember_unparsable):
        cached = self.cache.get(key)
        if cached is not None and cached.get("unparsable"):
            if remember_unparsable:
                self.count("cache_hits")
                raise ItemFailed(cached["reason"])
        elif cached is not None:
            try:
                value = parse(cached["content"])
            except UnparsableOutput:
                log.warning("cache entry %s does not parse: asking again", self.cache.path(key))
            else:
                self.count("cache_hits")
                return value
        entry = {"key": key, "request": shown, "extra": cache_extra or {}}
        retries, last, unparsable, content = 0, "", False, ""  # retries: this item's, of either kind
        while True:
            try:
                content, taken = self._request(request, self.max_retries - retries)
                retries += taken
                value = parse(content)
            except _Failed as exc:
                retries += exc.retries
                last, unparsable = str(exc), False
                if not exc.again:
                    break
            except UnparsableOutput as exc:  # nothing to wait for: ask again at once
                last, unparsable = str(exc), True
            else:
                self.cache.put(key, {**entry, "content": content})
                return value
            if retries >= self.max_retries:
                break
            retries += 1
            self.count("retries")
        reason = (
            f"{self.what} output unparsable after {retries} retries: {last}"
            if unparsable
            else f"{self.what} request failed after {retries} retries: {last}"
        )
        if unparsable and remember_unparsable:
            self.cache.put(key, {**entry, "content": content, "unparsable": True, "reason": reason})
        raise ItemFailed(reason)

    def check_endpoint(self) -> None:
        """Fail fast, before a job starts, when the endpoint is unreachable or refuses the key
        (``GET /models``; a server without that route is given the benefit of the doubt)."""
        import openai

        try:  # one GET, none of the client's retries: an endpoint that is down fails the job now
            self.client().with_options(max_retries=0).models.list()
        except openai.APIConnectionError as exc:
            raise ChatError(
                f"{self.what} endpoint {self.base_url} cannot be reached ({exc}): check '{self.setting}.base_url'"
            ) from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise self._key_refused(exc) from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            log.warning("%s endpoint %s: GET /models answered HTTP %s; going on", self.what, self.base_url, status)

    def client(self) -> Any:
        """The ``openai.OpenAI`` client (built on first use), retrying up to ``max_retries`` times."""
        with self._lock:
            if self._client is None:
                import openai

                self._client = openai.OpenAI(
                    base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=self.max_retries
                )
            return self._client

    def _key_refused(self, exc) -> ChatError:
        return ChatError(
            f"{self.what} endpoint {self.base_url} refused the API key (HTTP {exc.status_code}): set "
            f"{self.key_hint} ({short(exc.message)})"
        )

    def _request(self, request: dict[str, Any], retries_left: int) -> tuple[str, int]:
        """One call, which the client retries up to ``retries_left`` times on transport failures; returns the
        answer text ("" if none) and the retries it took. Raises _Failed or ChatError.

        How many retries the client took (it does not say through its exceptions): on success the raw
        response's public ``retries_taken``; on failure the ``x-stainless-retry-count`` header the client
        stamps on every request it sends (0 on the first), read from the last request (``exc.request``).
        Both are the client's own count, so neither a custom transport nor a hook on the HTTP client is
        needed."""
        import openai

        client = self.client().with_options(max_retries=retries_left)
        try:
            raw = client.chat.completions.with_raw_response.create(**request)
        except openai.APIError as exc:
            taken = _retries_taken(exc)
            self._count_calls(taken)
            if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
                raise self._key_refused(exc) from exc
            if isinstance(exc, openai.NotFoundError):
                raise ChatError(
                    f"{self.what} endpoint {self.base_url} answered HTTP 404 for model {request.get('model')!r}: "
                    f"check '{self.setting}.base_url' (it usually ends in /v1) and '{self.setting}.model' "
                    f"({short(exc.message)})"
                ) from exc
            if isinstance(exc, openai.APITimeoutError):
                raise _Failed(f"timeout after {self.timeout_s:g} s", taken) from exc
            if isinstance(exc, openai.APIConnectionError):
                raise _Failed(f"cannot reach {self.base_url}: {exc}", taken) from exc
            if isinstance(exc, openai.APIStatusError):
                raise _Failed(f"HTTP {exc.status_code}: {short(exc.message)}", taken) from exc
            raise _Failed(f"bad response: {short(str(exc))}", taken, again=True) from exc
        self._count_calls(raw.retries_taken)
        try:
            resp = raw.parse()
            choices = resp.choices or []
        except (openai.APIError, ValueError, AttributeError) as exc:  # a body that is no chat completion
            reason = f"bad response: {short(str(exc) or type(exc).__name__)}"
            raise _Failed(reason, raw.retries_taken, again=True) from exc
        usage = getattr(resp, "usage", None)
        if usage is not None:
            self.count("prompt_tokens", usage.prompt_tokens or 0)
            self.count("completion_tokens", usage.completion_tokens or 0)
        content = choices[0].message.content if choices and choices[0].message is not None else None
        return content or "", raw.retries_taken  # whether an empty answer will do is the parser's call

    def _count_calls(self, retries: int) -> None:
        with self._lock:
            self.stats["requests"] += retries + 1
            self.stats["retries"] += retries


def _retries_taken(exc: Any) -> int:
    """The retries the client made before raising ``exc``: its ``x-stainless-retry-count`` on the last request."""
    try:
        return int(exc.request.headers.get("x-stainless-retry-count", 0))
    except (AttributeError, TypeError, ValueError):
        return 0
