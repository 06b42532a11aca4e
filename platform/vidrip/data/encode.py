"""Write frames (and optionally an audio track) as an H.264 mp4 with the ffmpeg command-line tool.

OpenCV's bundled FFmpeg has no libx264, so we pipe raw RGB frames into the system ``ffmpeg``
(Debian's package). Audio, when given, is a WAV muxed as AAC; without it the file has no audio
stream (muted clips). Output is bit-exact for the same input (no encoder version tags).

    write_mp4("clip.mp4", frames, fps=2)                      # muted
    write_mp4("talk.mp4", frames, fps=10, audio="voice.wav")  # with narration
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = ["EncodeError", "ffmpeg_binary", "write_mp4"]


class EncodeError(RuntimeError):
    pass


def ffmpeg_binary() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise EncodeError("ffmpeg not found on PATH; install it (Debian: apt-get install ffmpeg, or `make setup`)")
    return path


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    audio: str | Path | None = None,
    crf: int = 23,
) -> Path:
    """Encode ``frames`` (RGB uint8, all the same even size) to ``path``; returns the path."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise EncodeError(f"{path}: no frames to write")
    h, w = first.shape[:2]
    if h % 2 or w % 2:
        raise EncodeError(f"{path}: frame size {w}x{h} must be even for yuv420p H.264")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".part" + out.suffix)
    cmd = [
        ffmpeg_binary(),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{w}x{h}",
        "-r",
        f"{fps}",
        "-i",
        "-",
    ]
    if audio is not None:
        cmd += ["-i", str(audio), "-c:a", "aac", "-b:a", "64k", "-shortest"]
    cmd += [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        str(crf),
        "-pix_fmt",
        "yuv420p",
        "-g",
        str(max(1, round(fps * 2))),
        "-threads",
        "1",
        "-movflags",
        "+faststart",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        "-flags:a",
        "+bitexact",
        "-map_metadata",
        "-1",
        str(tmp),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for frame in itertools.chain([first], frames):
            if frame.shape[:2] != (h, w):
                raise EncodeError(f"{path}: frame size changed from {w}x{h} to {frame.shape[1]}x{frame.shape[0]}")
            proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
    except BrokenPipeError:
        pass
    finally:
        proc.stdin.close()
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        tmp.unlink(missing_ok=True)
        raise EncodeError(f"{path}: ffmpeg failed: {err.strip()[-800:]}")
    tmp.replace(out)
    return out
