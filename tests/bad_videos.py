"""Inputs that curation must survive, each with the reason it should give (or None: it is processed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from vidrip.data.encode import ffmpeg_binary, write_mp4
from vidrip.data.sample.render import Shot, View, render_shot
from vidrip.data.sample.sources import load_source


def write_bad_inputs(folder: Path, good_video: Path) -> dict[str, str | None]:
    """Write the bad inputs into ``folder``; returns {file name: expected reason fragment, or None}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero_bytes.mp4").write_bytes(b"")
    data = good_video.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "text_named.mp4").write_text("this is not a video\n" * 50)
    subprocess.run(
        [
            ffmpeg_binary(),
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=2",
            "-c:a",
            "aac",
            str(folder / "audio_only.mp4"),
        ],
        check=True,
    )
    write_mp4(folder / "one_frame.mp4", [np.full((240, 320, 3), 200, np.uint8)], fps=10)
    img = load_source("hne")
    h, w = img.shape[:2]
    viewport = (3840 // 16, 2160 // 12, 3840 - 3840 // 16, 2160 - 2160 // 12)  # a slide viewer, as in the sample
    shot = Shot("tissue", 2.0, "hne", View(w / 2, h / 2, w * 0.4), View(w / 2, h / 2, w * 0.35), viewport)
    frames, _ = render_shot(shot, 3840, 2160, 2)
    write_mp4(folder / "frame_4k.mp4", frames, fps=2)
    return {
        "zero_bytes.mp4": "file is empty",
        "truncated.mp4": "",  # decord's reason varies; any reject with a reason
        "text_named.mp4": "not a media file",
        "audio_only.mp4": "no video stream (audio only)",
        "one_frame.mp4": "too short",
        "frame_4k.mp4": None,  # decoded downscaled at decode time: processed, not refused
    }
