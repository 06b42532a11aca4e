"""Build the embedded sample corpus: raw teaching videos with ground truth, and the five data sets.

Run as::

    vidrip sample --out work/sample            # or: python jobs/sample.py --config jobs/configs/sample.yaml

Deterministic for a given seed and config. The tissue is real (an H&E slide region read with
OpenSlide, and scikit-image's IHC image); the instructions are templated from measurements of the
pixels they describe. Output layout (paths in the JSON files are relative to the output folder)::

    raw/teach_NN.mp4 + raw/teach_NN.truth.json   teaching videos: H.264 + AAC narration, captions,
                                                 presenter picture-in-picture, hard cuts
    images/  clips/  videos/                     media of the data sets
    stage0_align.json       image-caption pairs (projector alignment)
    stage1_image_sft.json   image instructions, LLaVA conversation format
    stage2_clip_sft.json    short clips with instructions
    stage3_video_sft.json   videos with chain-of-thought answers ending "Diagnosis: ..."
    test.json               held-out videos in the ViDRiP test format (video_name, question, answer)
    metadata.json, README.md  provenance, licences, counts, fingerprint
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from pydantic import Field
from tqdm import tqdm

from vidrip.config import StrictConfig
from vidrip.data.encode import write_mp4
from vidrip.data.fingerprint import fingerprint_tree
from vidrip.data.sample import texts
from vidrip.data.sample.narrate import NarrationLine, write_narration
from vidrip.data.sample.render import (
    Caption,
    Shot,
    View,
    magnification_words,
    pick_roi,
    region_at,
    render_shot,
)
from vidrip.data.sample.sources import PRESENTER_PROVENANCE, SOURCES, describe_region, load_source, region_label
from vidrip.data.schema import InstructionRecord, TestRecord

__all__ = ["DATASET_FILES", "SampleConfig", "build_sample"]

log = logging.getLogger(__name__)

DATASET_FILES = {
    "stage0": "stage0_align.json",
    "stage1": "stage1_image_sft.json",
    "stage2": "stage2_clip_sft.json",
    "stage3": "stage3_video_sft.json",
    "test": "test.json",
}
SOURCE_KEYS = ("hne", "ihc")
NOTICE = (
    "Research use only, not for clinical decisions. The tissue is real (see sources); the instructions, "
    "captions and 'diagnoses' are templated from stain measurements of the pixels they describe, not "
    "written by a pathologist."
)


class SampleConfig(StrictConfig):
    """How big the sample is. The defaults keep the whole demo within minutes on 2 CPU cores."""

    out: str = "work/sample"
    seed: int = 0
    width: int = Field(default=320, ge=64, multiple_of=2)
    height: int = Field(default=240, ge=48, multiple_of=2)
    raw_videos: int = Field(default=2, ge=0)
    raw_fps: int = Field(default=10, ge=1, le=60)
    stage0_images: int = Field(default=24, ge=0)
    stage1_images: int = Field(default=16, ge=0)
    image_size: int = Field(default=128, ge=16)
    stage2_clips: int = Field(default=12, ge=0)
    clip_seconds: float = Field(default=4.0, gt=0)
    clip_fps: int = Field(default=2, ge=1, le=5)
    stage3_videos: int = Field(default=8, ge=0)
    test_videos: int = Field(default=4, ge=0)
    video_seconds: float = Field(default=8.0, gt=0)
    video_fps: int = Field(default=4, ge=1, le=5)


def _spans(key: str) -> tuple[float, float, float]:
    """Overview, medium and high-power camera spans (source pixels across the viewport)."""
    img = load_source(key)
    overview = float(max(img.shape[1], img.shape[0] * 4 / 3))
    return overview, overview / 3, max(overview / 8, 160.0)


def _overview(key: str) -> View:
    img = load_source(key)
    return View(img.shape[1] / 2, img.shape[0] / 2, _spans(key)[0])


def _label_at(key: str, view: View) -> str:
    return region_label(SOURCES[key], describe_region(region_at(key, view, 160, 120)))


class _Builder:
    def __init__(self, cfg: SampleConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.rngs = {
            name: np.random.default_rng([cfg.seed, i])
            for i, name in enumerate(("raw", "stage0", "stage1", "stage2", "stage3", "test"))
        }

    def _source(self, i: int) -> str:
        return SOURCE_KEYS[i % len(SOURCE_KEYS)]

    def image_item(self, stream: str, i: int) -> tuple[str, str, str, str]:
        """Save a crop; return (relative path, source key, magnification words, label)."""
        key = self._source(i)
        rng = self.rngs[stream]
        _, medium, high = _spans(key)
        span = float(rng.uniform(high, medium * 1.5))
        view = pick_roi(key, span, rng)
        crop = region_at(key, view, self.cfg.image_size, self.cfg.image_size)
        rel = f"images/{stream}_{i:03d}.png"
        from PIL import Image

        Image.fromarray(crop).save(self.out / rel, optimize=False)
        label = region_label(SOURCES[key], describe_region(crop))
        return rel, key, magnification_words(key, span), label

    def stage0(self):
        out = []
        for i in range(self.cfg.stage0_images):
            rel, key, mag, label = self.image_item("stage0", i)
            prompt = str(self.rngs["stage0"].choice(texts.CAPTION_PROMPTS))
            out.append(
                {
                    "id": f"s0-{i:03d}",
                    "image": rel,
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{prompt}"},
                        {"from": "gpt", "value": texts.caption(SOURCES[key], mag, label)},
                    ],
                }
            )
            yield
        self.records["stage0"] = out

    def stage1(self):
        out = []
        for i in range(self.cfg.stage1_images):
            rel, key, mag, label = self.image_item("stage1", i)
            conv = texts.image_conversation(SOURCES[key], mag, label, self.rngs["stage1"])
            out.append({"id": f"s1-{i:03d}", "image": rel, "conversations": conv})
            yield
        self.records["stage1"] = out

    def stage2(self):
        out = []
        rng = self.rngs["stage2"]
        cfg = self.cfg
        for i in range(cfg.stage2_clips):
            key = self._source(i)
            high = _spans(key)[2]
            end = pick_roi(key, high * float(rng.uniform(1.0, 1.6)), rng)
            if rng.random() < 0.5:
                start, motion = View(end.cx, end.cy, end.span * 2.5), "zooms in"
            else:
                dx = end.span * float(rng.uniform(0.5, 1.0)) * (1 if rng.random() < 0.5 else -1)
                start, motion = View(end.cx - dx, end.cy, end.span), "pans"
            shot = Shot("tissue", cfg.clip_seconds, key, start, end)
            frames, _ = render_shot(shot, cfg.width, cfg.height, cfg.clip_fps)
            rel = f"clips/s2_{i:03d}.mp4"
            write_mp4(self.out / rel, frames, cfg.clip_fps)
            label = _label_at(key, end)
            desc = texts.clip_description(SOURCES[key], motion, magnification_words(key, end.span), label)
            out.append(
                {
                    "id": f"s2-{i:03d}",
                    "video": rel,
                    "conversations": [
                        {"from": "human", "value": "<image>\nDescribe what this clip shows."},
                        {"from": "gpt", "value": desc},
                    ],
                }
            )
            yield
        self.records["stage2"] = out

    def _diagnostic_video(self, stream: str, i: int) -> tuple[str, str, str]:
        """Overview -> zoom into a region -> hold; returns (relative path, question, answer)."""
        cfg, rng = self.cfg, self.rngs[stream]
        key = self._source(i + (1 if stream == "test" else 0))
        _, _, high = _spans(key)
        roi = pick_roi(key, high * float(rng.uniform(0.8, 1.3)), rng)
        overview = _overview(key)
        zoom_s = cfg.video_seconds * 0.6
        shots = [
            Shot("tissue", zoom_s, key, overview, roi),
            Shot("tissue", cfg.video_seconds - zoom_s, key, roi, View(roi.cx + roi.span * 0.2, roi.cy, roi.span)),
        ]
        frames = [f for shot in shots for f in render_shot(shot, cfg.width, cfg.height, cfg.video_fps)[0]]
        rel = f"videos/{stream}_{i:03d}.mp4"
        write_mp4(self.out / rel, frames, cfg.video_fps)
        label = _label_at(key, roi)
        answer = texts.video_answer(
            SOURCES[key], magnification_words(key, overview.span), magnification_words(key, roi.span), label
        )
        return rel, texts.video_question(rng), answer

    def stage3(self):
        out = []
        for i in range(self.cfg.stage3_videos):
            rel, question, answer = self._diagnostic_video("stage3", i)
            out.append(
                {
                    "id": f"s3-{i:03d}",
                    "video": rel,
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{question}"},
                        {"from": "gpt", "value": answer},
                    ],
                }
            )
            yield
        self.records["stage3"] = out

    def test(self):
        out = []
        for i in range(self.cfg.test_videos):
            rel, question, answer = self._diagnostic_video("test", i)
            out.append({"video_name": rel, "question": question, "answer": answer})
            yield
        self.records["test"] = out

    def raw(self):
        for i in range(self.cfg.raw_videos):
            self.raw_video(i)
            yield

    def raw_video(self, i: int) -> None:
        """A teaching video: presenter intro, slide A overview + zoom + pan, hard cut, slide B."""
        cfg, rng = self.cfg, self.rngs["raw"]
        w, h = cfg.width, cfg.height
        viewport = (w // 16, h // 12, w - w // 16, h - h // 12)
        a, b = (SOURCE_KEYS[i % 2], SOURCE_KEYS[(i + 1) % 2])
        # (shot, hard cut before it, narration spoken from its start, source)
        shots: list[tuple[Shot, bool, str, str | None]] = [(Shot("presenter", 2.0), True, texts.INTRO_NARRATION, None)]
        for key, secs in ((a, 6.0), (b, 6.0)):
            _, _, high = _spans(key)
            roi = pick_roi(key, high, rng)
            ov = _overview(key)
            src = SOURCES[key]
            label = _label_at(key, roi)
            shots.append(
                (
                    Shot(
                        "tissue",
                        secs * 0.6,
                        key,
                        ov,
                        roi,
                        viewport,
                        captions=[Caption(f"{src.stain} - low power overview", 0.0, 1.5)],
                        pip=(0.0, secs * 0.6),
                    ),
                    True,
                    texts.overview_narration(src),
                    key,
                )
            )
            pan_end = View(roi.cx + roi.span * 0.3, roi.cy + roi.span * 0.1, roi.span)
            shots.append(
                (
                    Shot(
                        "tissue",
                        secs * 0.4,
                        key,
                        roi,
                        pan_end,
                        viewport,
                        captions=[Caption(f"{label}", 0.3, secs * 0.4)],
                    ),
                    False,
                    texts.finding_narration(label),
                    key,
                )
            )
        frames: list[np.ndarray] = []
        truth: list[dict] = []
        shot_rows, lines = [], []
        for s, (shot, cut, narration, key) in enumerate(shots):
            start_frame = len(frames)
            fr, gt = render_shot(shot, w, h, cfg.raw_fps)
            for frame, g in zip(fr, gt, strict=True):
                g.update(frame=len(frames), t=round(len(frames) / cfg.raw_fps, 4), shot=s, source=key)
                frames.append(frame)
                truth.append(g)
            shot_rows.append(
                {
                    "shot": s,
                    "kind": shot.kind,
                    "source": key,
                    "start_frame": start_frame,
                    "end_frame": len(frames),
                    "hard_cut_before": cut and s > 0,
                }
            )
            lines.append(NarrationLine(narration, start_frame / cfg.raw_fps, shot.seconds - 0.1))
        duration = len(frames) / cfg.raw_fps
        rel = f"raw/teach_{i:02d}.mp4"
        with tempfile.TemporaryDirectory(prefix="vidrip-sample-") as tmp:
            wav = Path(tmp) / "narration.wav"
            transcript = write_narration(lines, duration, wav)
            write_mp4(self.out / rel, frames, cfg.raw_fps, audio=wav)
        (self.out / f"raw/teach_{i:02d}.truth.json").write_text(
            json.dumps(
                {
                    "video": rel,
                    "fps": cfg.raw_fps,
                    "width": w,
                    "height": h,
                    "num_frames": len(frames),
                    "duration": duration,
                    "shots": shot_rows,
                    "cuts": [r["start_frame"] for r in shot_rows if r["hard_cut_before"]],
                    "narration": transcript,
                    "frames": truth,
                },
                indent=1,
            )
        )

    def run(self) -> dict:
        for d in ("raw", "images", "clips", "videos"):
            (self.out / d).mkdir(parents=True, exist_ok=True)
        self.records: dict[str, list[dict]] = {}
        cfg = self.cfg
        steps = [
            ("raw teaching videos", self.raw, cfg.raw_videos),
            ("stage 0 images", self.stage0, cfg.stage0_images),
            ("stage 1 images", self.stage1, cfg.stage1_images),
            ("stage 2 clips", self.stage2, cfg.stage2_clips),
            ("stage 3 videos", self.stage3, cfg.stage3_videos),
            ("test videos", self.test, cfg.test_videos),
        ]
        with tqdm(total=sum(n for _, _, n in steps), desc="sample", unit="item") as bar:
            for name, step, _ in steps:
                bar.set_postfix_str(name)
                for _ in step():
                    bar.update()
        for stage, name in DATASET_FILES.items():
            kind = TestRecord if stage == "test" else InstructionRecord
            records = [kind.model_validate(r).to_json() for r in self.records[stage]]
            (self.out / name).write_text(json.dumps(records, indent=1))
        return self.write_metadata()

    def write_metadata(self) -> dict:
        meta = {
            "name": "vidrip-sample",
            "description": "Embedded sample corpus of vidrip: virtual-microscope teaching videos rendered "
            "from real slides, with ground truth, and small data sets for the four training stages.",
            "notice": NOTICE,
            "licence": "Derived media and templated texts: CC0 1.0; each source keeps its own terms (below).",
            "sources": {
                k: {"stain": s.stain, "provenance": s.provenance, "licence": s.licence} for k, s in SOURCES.items()
            }
            | {"presenter": {"provenance": PRESENTER_PROVENANCE, "licence": "public domain"}},
            "narration": "synthesised with espeak-ng",
            "config": self.cfg.model_dump(),
            "datasets": {stage: {"file": f, "records": len(self.records[stage])} for stage, f in DATASET_FILES.items()},
            "raw_videos": sorted(p.name for p in (self.out / "raw").glob("*.mp4")),
        }
        meta["fingerprint"] = fingerprint_tree(self.out, exclude=("metadata.json", "README.md"))
        (self.out / "metadata.json").write_text(json.dumps(meta, indent=1))
        (self.out / "README.md").write_text(_card(meta))
        return meta


def _card(meta: dict) -> str:
    rows = "\n".join(f"| {k} | {v['provenance']} | {v['licence']} |" for k, v in meta["sources"].items())
    sets = "\n".join(f"| {k} | `{v['file']}` | {v['records']} |" for k, v in meta["datasets"].items())
    return f"""# vidrip sample corpus

{meta["notice"]}

Fingerprint `{meta["fingerprint"]}`, seed {meta["config"]["seed"]}.

## Sources

| source | provenance | licence |
|---|---|---|
{rows}

Narration is synthesised with espeak-ng. {meta["licence"]}

## Data sets

| stage | file | records |
|---|---|---|
{sets}

Raw teaching videos (`raw/`) each have a `*.truth.json` with per-frame tissue, text and presenter boxes,
shot boundaries and the narration transcript.
"""


def build_sample(cfg: SampleConfig) -> dict:
    """Build the corpus into ``cfg.out``; returns its metadata."""
    return _Builder(cfg).run()
