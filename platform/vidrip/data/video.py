"""Video reading with decord, and the frame-sampling rules of the paper.

``FramePolicy`` says which frames a model sees:

- ``rule="fps"`` (training, the paper's rule): one frame per ``1/fps`` seconds, at most
  ``max_frames`` (32); when there would be more, ``max_frames`` uniform ``linspace`` indices over the
  whole clip instead.
- ``rule="uniform"`` (the paper's evaluation and demo): exactly ``num_frames`` uniform indices.

Frames are resized while decoding (decord's decode-time resize) to ``size`` x ``size``.

    frames = read_frames("clip.mp4", FramePolicy(rule="fps"), size=384)
    frames.array.shape   # (T, 384, 384, 3) uint8 RGB
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from vidrip.config import StrictConfig

__all__ = [
    "FramePolicy",
    "SampledFrames",
    "VideoInfo",
    "VideoReadError",
    "fps_indices",
    "read_frames",
    "sample_indices",
    "uniform_indices",
    "video_info",
]


class VideoReadError(RuntimeError):
    """A video that cannot be read; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: cannot read video: {reason}")


class FramePolicy(StrictConfig):
    """Which frames to take from a video (see module docstring)."""

    rule: Literal["fps", "uniform"] = "fps"
    fps: float = Field(default=1.0, gt=0)
    max_frames: int = Field(default=32, ge=1)
    num_frames: int = Field(default=32, ge=1)


def uniform_indices(total: int, n: int) -> np.ndarray:
    """``n`` indices spread uniformly over ``[0, total-1]`` (``np.linspace``, rounded), or all if fewer."""
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    if total <= n:
        return np.arange(total, dtype=np.int64)
    return np.linspace(0, total - 1, n).round().astype(np.int64)


def fps_indices(total: int, video_fps: float, fps: float = 1.0, max_frames: int = 32) -> np.ndarray:
    """One index per ``1/fps`` seconds; ``max_frames`` uniform indices if that gives more."""
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    step = max(1, round(video_fps / fps))
    idx = np.arange(0, total, step, dtype=np.int64)
    if len(idx) > max_frames:
        return uniform_indices(total, max_frames)
    return idx


def sample_indices(total: int, video_fps: float, policy: FramePolicy) -> np.ndarray:
    if policy.rule == "fps":
        return fps_indices(total, video_fps, policy.fps, policy.max_frames)
    return uniform_indices(total, policy.num_frames)


@dataclass(frozen=True)
class SampledFrames:
    array: np.ndarray  # (T, H, W, 3) uint8 RGB
    indices: np.ndarray  # frame indices into the source video
    timestamps: np.ndarray  # seconds
    video_fps: float
    total_frames: int

    @property
    def duration(self) -> float:
        return self.total_frames / self.video_fps if self.video_fps else 0.0


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def _open(p: Path, **kwargs):
    import decord

    if not p.is_file():
        raise VideoReadError(p, "file not found")
    if p.stat().st_size == 0:
        raise VideoReadError(p, "file is empty (0 bytes)")
    try:
        vr = decord.VideoReader(str(p), ctx=decord.cpu(0), num_threads=1, **kwargs)
    except (decord.DECORDError, RuntimeError) as exc:
        raise VideoReadError(p, f"no decodable video stream ({str(exc).splitlines()[0][:200]})") from None
    if len(vr) == 0:
        raise VideoReadError(p, "the video stream has no frames")
    if float(vr.get_avg_fps() or 0.0) <= 0:
        raise VideoReadError(p, "the video stream has no frame rate")
    return vr


def video_info(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and frame size of ``path`` (decodes one frame); :class:`VideoReadError` if unusable."""
    import decord

    p = Path(path)
    vr = _open(p)
    try:
        height, width = vr[0].shape[:2]
    except (decord.DECORDError, RuntimeError, IndexError) as exc:
        raise VideoReadError(p, f"decoding failed ({str(exc).splitlines()[0][:200]})") from None
    return VideoInfo(num_frames=len(vr), fps=float(vr.get_avg_fps()), width=int(width), height=int(height))


def read_frames(path: str | Path, policy: FramePolicy | None = None, size: int | None = None) -> SampledFrames:
    """Decode the frames ``policy`` picks from ``path``; resize to ``size``² while decoding if given.

    Raises :class:`VideoReadError` for a missing, empty, truncated or non-video file.
    """
    import decord

    policy = policy or FramePolicy()
    p = Path(path)
    vr = _open(p, **({"width": int(size), "height": int(size)} if size is not None else {}))
    total = len(vr)
    fps = float(vr.get_avg_fps())
    idx = sample_indices(total, fps, policy)
    try:
        arr = vr.get_batch(idx.tolist()).asnumpy()
    except (decord.DECORDError, RuntimeError) as exc:
        raise VideoReadError(p, f"decoding failed ({str(exc).splitlines()[0][:200]})") from None
    return SampledFrames(array=arr, indices=idx, timestamps=idx / fps, video_fps=fps, total_frames=total)
