"""A spoken narration track: espeak-ng speaks each line, placed at its shot's start time.

Each line is synthesised separately (``espeak-ng -w``), sped up if it would run past its shot, and
laid on a silent track at the shot's start, so the ground-truth transcript has real timestamps.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["NarrationLine", "espeak_binary", "write_narration"]

SAMPLE_RATE = 22050  # espeak-ng's native rate


@dataclass(frozen=True)
class NarrationLine:
    text: str
    start: float  # seconds
    max_seconds: float


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError(
            "espeak-ng not found on PATH; install it (Debian: apt-get install espeak-ng, or `make setup`)"
        )
    return path


def _speak(text: str, words_per_minute: int, out: Path) -> np.ndarray:
    subprocess.run(
        [espeak_binary(), "-v", "en-us", "-s", str(words_per_minute), "-w", str(out), text],
        check=True,
        capture_output=True,
    )
    with wave.open(str(out)) as wf:
        if wf.getframerate() != SAMPLE_RATE or wf.getsampwidth() != 2:
            raise RuntimeError(
                f"espeak-ng wrote {wf.getframerate()} Hz / {wf.getsampwidth() * 8} bit; expected 22050/16"
            )
        return np.frombuffer(wf.readframes(wf.getnframes()), dtype=np.int16)


def write_narration(lines: list[NarrationLine], total_seconds: float, out: str | Path) -> list[dict]:
    """Write a mono 16-bit WAV of ``total_seconds``; return the transcript with actual start/end times."""
    track = np.zeros(round(total_seconds * SAMPLE_RATE), dtype=np.int16)
    transcript = []
    with tempfile.TemporaryDirectory(prefix="vidrip-tts-") as tmp:
        for i, line in enumerate(lines):
            wpm = 165
            audio = _speak(line.text, wpm, Path(tmp) / f"{i}.wav")
            while len(audio) / SAMPLE_RATE > line.max_seconds and wpm < 400:
                wpm = int(wpm * 1.2)
                audio = _speak(line.text, wpm, Path(tmp) / f"{i}.wav")
            start = round(line.start * SAMPLE_RATE)
            end = min(len(track), start + len(audio), start + round(line.max_seconds * SAMPLE_RATE))
            track[start:end] = audio[: end - start]
            transcript.append({"start": round(line.start, 3), "end": round(end / SAMPLE_RATE, 3), "text": line.text})
    with wave.open(str(out), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(SAMPLE_RATE)
        wf.writeframes(track.tobytes())
    return transcript
