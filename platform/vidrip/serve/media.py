"""Media of a request, from its URL to what the model sees, with every limit checked on the way.

A URL is one of: ``data:<mime>;base64,<payload>``; ``http(s)://...`` (fetched through
:mod:`vidrip.serve.urlguard`); or a path relative to ``media.root`` (no ``..``, no absolute path, no
symlink that leads out of the root). A video's frames are sampled exactly as in training (the
endpoint's :class:`FramePolicy`: one per second, at most 32) and resized while decoding to the model's
image size; an image is decoded with Pillow after its size is checked (no decompression bombs).

A request may ask for other frames (``media_io_kwargs``, see :func:`frame_policy`), within ``limits.max_frames``.

    policy = frame_policy(cfg, request.media_io_kwargs)
    media = load_media(url, "video", cfg, param="messages[0].content[1].video_url.url", image_size=384,
                       policy=policy)
    media.frames.shape        # (T, 384, 384, 3) uint8
"""

from __future__ import annotations

import base64
import binascii
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vidrip.data.video import FramePolicy, VideoReadError, read_frames, video_info
from vidrip.serve import urlguard
from vidrip.serve.config import ServeConfig
from vidrip.serve.protocol import APIError, MediaIOKwargs

__all__ = ["Media", "frame_policy", "load_media", "read_source"]

Kind = Literal["image", "video"]


@dataclass
class Media:
    kind: Kind
    frames: np.ndarray | None = None  # video: (T, H, W, 3) uint8 RGB
    image: object | None = None  # image: PIL.Image (RGB)
    seconds: float = 0.0
    timestamps: tuple[float, ...] = ()  # video: the sampled frames' times (s)

    def describe(self) -> dict:
        """What the model was shown, for the reply's ``media`` field."""
        if self.kind == "video":
            return {"kind": "video", "frames": len(self.timestamps), "frame_timestamps": list(self.timestamps)}
        return {"kind": "image", "size": list(self.image.size)}

    def signature(self) -> tuple:
        """What must match for two requests to share one batch."""
        if self.kind == "video":
            return ("video", self.frames.shape)
        return ("image", self.image.size)


def _too_large(param: str, what: str) -> APIError:
    return APIError(413, f"{param}: {what}", param=param, code="media_too_large")


def _data_url(url: str, param: str, max_bytes: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise APIError(400, f"{param}: a data: URL must be base64 (data:<mime>;base64,<data>)", param=param)
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise _too_large(
            param, f"about {len(payload) * 3 // 4} bytes > the limit of {max_bytes} (limits.max_media_bytes)"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{param}: the data: URL's payload is not valid base64", param=param) from None


def _local(url: str, param: str, cfg: ServeConfig) -> Path:
    root = cfg.media_root()
    if root is None:
        raise APIError(
            400,
            f"{param}: local media paths are off on this endpoint (no media root); send a data: or http(s) URL",
            param=param,
        )
    rel = url.removeprefix("file://") if url.startswith("file://") else url
    pure = Path(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel or "\x00" in rel:
        raise APIError(
            403,
            f"{param}: media paths are relative to the media root, without '..'",
            param=param,
            code="media_forbidden",
        )
    path = (root / pure).resolve()
    if not path.is_relative_to(root):
        raise APIError(403, f"{param}: the path leads outside the media root", param=param, code="media_forbidden")
    if not path.is_file():
        raise APIError(404, f"{param}: no such file under the media root: {rel}", param=param, code="media_not_found")
    if path.stat().st_size > cfg.limits.max_media_bytes:
        raise _too_large(param, f"{path.stat().st_size} bytes > the limit of {cfg.limits.max_media_bytes}")
    return path


def read_source(url: str, param: str, cfg: ServeConfig) -> bytes | Path:
    """The bytes a URL holds (data:, http(s)), or the checked local path under the media root."""
    if url.startswith("data:"):
        return _data_url(url, param, cfg.limits.max_media_bytes)
    scheme = url.split(":", 1)[0].lower() if ":" in url.split("/", 1)[0] else ""
    if scheme in ("http", "https"):
        if not cfg.media.allow_http:
            raise APIError(400, f"{param}: http(s) media URLs are off on this endpoint", param=param)
        policy = urlguard.FetchPolicy.of(
            cfg.limits.max_media_bytes, cfg.limits.fetch_timeout_s, cfg.media.max_redirects, cfg.media.allow_networks
        )
        try:
            return urlguard.fetch(url, policy)
        except urlguard.Refused as exc:
            raise APIError(403, f"{param}: refused: {exc}", param=param, code="media_forbidden") from None
        except urlguard.TooLarge as exc:
            raise _too_large(param, str(exc)) from None
        except urlguard.Unreachable as exc:
            raise APIError(
                400, f"{param}: cannot fetch the media URL: {exc}", param=param, code="media_unreachable"
            ) from None
    if scheme and scheme != "file":
        raise APIError(400, f"{param}: unsupported URL scheme {scheme!r} (data:, http(s) or a media path)", param=param)
    return _local(url, param, cfg)


def frame_policy(cfg: ServeConfig, kwargs: MediaIOKwargs | None) -> FramePolicy:
    """The frames a request's video is sampled at: the endpoint's policy, or what ``media_io_kwargs.video``
    asks for (``num_frames``: uniform; ``fps``: per second, at most ``num_frames`` or the endpoint's
    ``max_frames``), never more than ``limits.max_frames``."""
    limit = cfg.limits.max_frames
    asked = kwargs.video if kwargs is not None else None
    if asked is None or (asked.num_frames is None and asked.fps is None):
        base = cfg.frames
        update = {"max_frames": min(base.max_frames, limit), "num_frames": min(base.num_frames, limit)}
        return FramePolicy.model_validate({**base.model_dump(), **update})
    if asked.num_frames is not None and asked.num_frames > limit:
        param = "media_io_kwargs.video.num_frames"
        raise APIError(400, f"{param}: {asked.num_frames} > limits.max_frames ({limit})", param=param)
    if asked.fps is not None:
        cap = asked.num_frames or min(cfg.frames.max_frames, limit)
        return FramePolicy(rule="fps", fps=asked.fps, max_frames=cap, num_frames=cap)
    return FramePolicy(rule="uniform", num_frames=asked.num_frames, max_frames=asked.num_frames)


def _video(source: bytes | Path, param: str, cfg: ServeConfig, image_size: int, policy: FramePolicy) -> Media:
    with tempfile.TemporaryDirectory(prefix="vidrip-media-") as tmp:
        if isinstance(source, bytes):
            path = Path(tmp) / "upload.mp4"
            path.write_bytes(source)
        else:
            path = source
        try:
            info = video_info(path)
        except VideoReadError as exc:
            raise APIError(
                400, f"{param}: not a readable video: {exc.reason}", param=param, code="invalid_media"
            ) from None
        limits = cfg.limits
        if info.width * info.height > limits.max_pixels:
            raise APIError(
                400,
                f"{param}: frame size {info.width}x{info.height} exceeds limits.max_pixels ({limits.max_pixels})",
                param=param,
                code="media_too_large",
            )
        if info.duration > limits.max_video_seconds:
            raise APIError(
                400,
                f"{param}: the video lasts {info.duration:.0f} s > limits.max_video_seconds "
                f"({limits.max_video_seconds:.0f})",
                param=param,
                code="media_too_long",
            )
        try:
            sampled = read_frames(path, policy, size=image_size)
        except VideoReadError as exc:
            raise APIError(
                400, f"{param}: not a readable video: {exc.reason}", param=param, code="invalid_media"
            ) from None
        stamps = tuple(round(float(t), 3) for t in sampled.timestamps)
        return Media("video", frames=sampled.array, seconds=info.duration, timestamps=stamps)


def _image(source: bytes | Path, param: str, cfg: ServeConfig) -> Media:
    from PIL import Image, UnidentifiedImageError

    data = source if isinstance(source, bytes) else source.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > cfg.limits.max_pixels:
                raise APIError(
                    400,
                    f"{param}: image size {width}x{height} exceeds limits.max_pixels ({cfg.limits.max_pixels})",
                    param=param,
                    code="media_too_large",
                )
            image = img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise APIError(400, f"{param}: not a readable image", param=param, code="invalid_media") from None
    return Media("image", image=image)


def load_media(
    url: str, kind: Kind, cfg: ServeConfig, param: str, image_size: int, policy: FramePolicy | None = None
) -> Media:
    """What the model sees of ``url`` (blocking: call it off the event loop); a video's frames by ``policy``
    (default: :func:`frame_policy` of the endpoint)."""
    source = read_source(url, param, cfg)
    if kind == "video":
        return _video(source, param, cfg, image_size, policy or frame_policy(cfg, None))
    return _image(source, param, cfg)
