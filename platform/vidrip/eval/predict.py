"""Predictions: each model under test answers each test question about its video, once, cached.

The request is what the released ViDRiP task sends a model: the video and the question, greedy decoding,
``max_tokens`` 1024, 32 uniform frames (vLLM's ``media_io_kwargs``, which the platform's endpoint speaks
too). The video goes inline as a ``data:`` URL (any server) or as a path the server resolves itself.

    preds = predict(model_cfg, items, media_root, chat, video_digests)   # one Prediction per item (and question_2)
    preds[0].text, preds[0].error

The cache key holds the video's content hash instead of its bytes, the model's ``revision`` and the
request's sampling, so a re-run pays nothing and new weights behind the same model name are asked again.
An empty answer is an answer (greedy decoding would give it again; the judge scores it). A request that
fails after its retries is a :class:`Prediction` with an ``error``, never an exception;
a refused key or an unknown model stops the model's run (:class:`~vidrip.chat.ChatError`).
"""

from __future__ import annotations

import base64
import logging
import mimetypes
from dataclasses import asdict, dataclass
from pathlib import Path

from vidrip.chat import ChatClient, ItemFailed
from vidrip.data.schema import TestRecord
from vidrip.eval.config import ModelUnderTest

__all__ = ["Prediction", "model_client", "predict", "video_request"]

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One model's answer to one question (``which``: ``question`` or ``question_2``)."""

    model: str
    index: int
    video_name: str
    which: str
    question: str
    text: str
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def model_client(cfg: ModelUnderTest, cache_dir: str | Path, setting: str) -> ChatClient:
    """The chat client of a model under test (``setting`` names its config section in errors)."""
    return ChatClient.for_section(
        cfg,
        base_url=cfg.base_url or "",
        api_key=cfg.resolved_api_key(),
        cache_dir=Path(cache_dir) / "predictions",
        setting=setting,
        what=f"model {cfg.name!r}",
        key_hint=f"'{setting}.api_key' or the environment variable {cfg.api_key_env}",
    )


def _video_url(cfg: ModelUnderTest, video: Path, video_name: str) -> str:
    if cfg.video_as == "path":
        return cfg.video_url_prefix + video_name
    mime = mimetypes.guess_type(video.name)[0] or "video/mp4"
    return f"data:{mime};base64," + base64.b64encode(video.read_bytes()).decode()


def video_request(cfg: ModelUnderTest, video_url: str, question: str) -> dict:
    """The chat request for one question about one video (keyword arguments of ``chat.completions.create``)."""
    request = {
        "model": cfg.model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": video_url}},
                    {"type": "text", "text": question},
                ],
            }
        ],
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
    }
    if cfg.num_frames is not None:
        request["extra_body"] = {"media_io_kwargs": {"video": {"num_frames": cfg.num_frames}}}
    return request


def predict(
    cfg: ModelUnderTest,
    items: list[TestRecord],
    media_root: str | Path,
    chat: ChatClient,
    video_digests: dict[str, str],
    with_question_2: bool = False,
    desc: str | None = None,
) -> list[Prediction]:
    """Every item's answer (and its ``question_2``'s when asked and present), in order; a progress bar
    when ``desc`` is given. ``video_digests``: each ``video_name``'s sha256, the cache's name for it."""
    root = Path(media_root)
    jobs = [(i, "question", item.question, item) for i, item in enumerate(items)]
    if with_question_2:
        jobs += [(i, "question_2", item.question_2, item) for i, item in enumerate(items) if item.question_2]

    def one(job) -> Prediction:
        index, which, question, item = job
        url = _video_url(cfg, root / item.video_name, item.video_name)
        request = video_request(cfg, url, question)
        as_key = video_request(cfg, f"sha256:{video_digests[item.video_name]}", question)
        extra = {"revision": cfg.revision, "video_as": cfg.video_as, "video_url": url if cfg.video_as == "path" else ""}
        try:
            text = chat.complete(request, str.strip, cache_extra=extra, key_request=as_key)
        except ItemFailed as exc:
            chat.count("failures")
            log.warning("%s: item %d (%s) %s: %s", cfg.name, index, item.video_name, which, exc)
            return Prediction(cfg.name, index, item.video_name, which, question, "", str(exc))
        return Prediction(cfg.name, index, item.video_name, which, question, text)

    return chat.map(one, jobs, desc=desc)
