"""Probe: is this file a usable video? Its streams, size, frame rate and duration, or the reason it is not.

The first step of ``vidrip curate``; it reads container headers (PyAV) and opens the video stream with
decord, the same decoder the later steps and training use. Reasons it records (the rejects table):

- ``file is empty (0 bytes)``, ``file not found``
- ``not a media file (...)`` (a text file named ``.mp4``), ``no video stream (audio only)``
- ``unreadable video stream (...)`` (a truncated mp4), ``too short: 0.10 s < 1.00 s``
- ``frame size 3840x2160 exceeds the limit of 8.3 Mpixel`` (``max_pixels``; raise it for such input)

    probe = Probe(ProbeConfig())          # a Ray Data actor: ds.map(Probe, fn_constructor_args=(cfg,), ...)
    row = probe({"key": k, "path": "lecture.mp4", "state": "{}"})
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.curate.rows import StepRejected, guarded

__all__ = ["Probe", "ProbeConfig", "probe_video"]


class ProbeConfig(StrictConfig):
    """Which inputs are usable at all."""

    min_seconds: float = Field(default=1.0, ge=0)
    max_seconds: float = Field(default=4 * 3600.0, gt=0)
    max_pixels: int = Field(default=3840 * 2160, ge=1, description="largest frame (width x height) accepted")


def _streams(path: Path) -> tuple[int, int]:
    """(video streams, audio streams) in the container, or a reject if it is not a media file."""
    import av

    try:
        with av.open(str(path)) as container:
            return len(container.streams.video), len(container.streams.audio)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise StepRejected(f"not a media file ({str(exc).splitlines()[0][:200]})") from None


def probe_video(path: str | Path, cfg: ProbeConfig) -> dict:
    """Metadata of a usable video, or :class:`StepRejected` with the reason."""
    import decord

    p = Path(path)
    if not p.is_file():
        raise StepRejected("file not found")
    size = p.stat().st_size
    if size == 0:
        raise StepRejected("file is empty (0 bytes)")
    n_video, n_audio = _streams(p)
    if n_video == 0:
        raise StepRejected("no video stream (audio only)" if n_audio else "no video stream")
    try:
        vr = decord.VideoReader(str(p), ctx=decord.cpu(0), num_threads=1)
        num_frames = len(vr)
        fps = float(vr.get_avg_fps() or 0.0)
        height, width = vr[0].shape[:2] if num_frames else (0, 0)
    except (decord.DECORDError, RuntimeError, IndexError) as exc:
        raise StepRejected(f"unreadable video stream ({str(exc).splitlines()[0][:200]})") from None
    if num_frames == 0 or fps <= 0:
        raise StepRejected(f"unreadable video stream ({num_frames} frames at {fps} fps)")
    if width * height > cfg.max_pixels:
        raise StepRejected(f"frame size {width}x{height} exceeds the limit of {cfg.max_pixels / 1e6:.1f} Mpixel")
    duration = num_frames / fps
    if duration < cfg.min_seconds:
        raise StepRejected(f"too short: {duration:.2f} s < {cfg.min_seconds:.2f} s")
    if duration > cfg.max_seconds:
        raise StepRejected(f"too long: {duration:.0f} s > {cfg.max_seconds:.0f} s")
    return {
        "bytes": size,
        "fps": fps,
        "num_frames": num_frames,
        "duration": round(duration, 4),
        "width": int(width),
        "height": int(height),
        "has_audio": n_audio > 0,
    }


class Probe:
    """Ray Data step (``map``): adds ``state["video"]`` or rejects the input."""

    def __init__(self, cfg: ProbeConfig):
        self.cfg = cfg

    def __call__(self, row: dict) -> dict:
        def step(row: dict, state: dict) -> dict:
            state["video"] = probe_video(row["path"], self.cfg)
            return {**row, "state": state}

        return guarded("probe", row, step)[0]
