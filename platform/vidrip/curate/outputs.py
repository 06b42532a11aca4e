"""What the curation job leaves on disk: one part file per input, then the tables and data sets.

Per input video, as soon as all of its shots are through the pipeline (so a crash keeps every
finished input)::

    parts/<video_id>.json      the input's outcome: its clips, drops, reject reason, stats
    clips/<clip_id>.mp4        muted clips (written by the clips step)
    videos/<video_id>.mp4      its kept clips, one after another (the stage-3 "video")
    previews/<clip_id>.png     original / detections, inpainted, cropped (for the contact sheet)

Then, over all parts (also those of earlier runs)::

    clips.parquet  rejects.parquet  clip_instructions.json  video_instructions.json  contact_sheet.png

``clips.parquet`` has one row per clip: source and its sha256, time span, frames, size, crop box in the
source frame, transcript, screen text, LLM quality and whether it was kept.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from vidrip.curate.clips import letterbox
from vidrip.curate.rows import get_state
from vidrip.curate.transcribe import transcript_text
from vidrip.data.encode import write_mp4
from vidrip.data.schema import InstructionRecord

__all__ = ["VideoOutcome", "aggregate", "contact_sheet", "write_json_atomic"]


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _order(row: dict) -> tuple[int, int]:
    """Rows of one video in (shot, clip) order."""
    st = get_state(row)
    return (st.get("shot") or {}).get("index", -1), (st.get("clip") or {}).get("index", -1)


class VideoOutcome:
    """Collects the rows of one input video as they stream in; knows when the last one arrived."""

    def __init__(self, video_id: str, source: Path, sha256: str):
        self.video_id, self.source, self.sha256 = video_id, source, sha256
        self.rows: list[dict] = []
        self.expected: dict[int, int] = {}  # shot -> rows it will produce
        self.shots: int | None = None

    def add(self, row: dict) -> None:
        state = get_state(row)
        self.rows.append(row)
        shot = state.get("shot")
        if shot is None:  # failed before it was split into shots
            self.shots = 0
            return
        self.shots = shot["count"]
        # a shot yields one row per clip once trimmed (a clip failing later is still its row), else one row
        self.expected[shot["index"]] = state.get("clips_in_shot") or 1

    @property
    def complete(self) -> bool:
        if self.shots is None:
            return False
        if self.shots == 0:
            return True
        if len(self.expected) < self.shots:
            return False
        seen: dict[int, int] = {}
        for row in self.rows:
            s = get_state(row).get("shot")
            if s is not None:
                seen[s["index"]] = seen.get(s["index"], 0) + 1
        return all(seen.get(k, 0) >= n for k, n in self.expected.items())

    def part(self, config_sha: str) -> dict:
        """The input's outcome as JSON (without the video-level instruction, added by the caller)."""
        clips, drops, failures = [], [], []
        seconds: dict[str, float] = {}
        nodes: dict[str, set[str]] = {}
        frames = {"decoded": 0, "clip_frames": 0, "keyframes": 0, "keyframes_ok": 0, "in_clips": 0}
        text_boxes = {"before": 0, "after": 0}
        video_meta, reject, transcript, screen = None, None, [], []
        shots_seen: set[int] = set()
        for row in sorted(self.rows, key=_order):
            st = get_state(row)
            video_meta = video_meta or st.get("video")
            for k, v in st.get("seconds", {}).items():
                seconds[k] = seconds.get(k, 0.0) + v
            for k, v in st.get("nodes", {}).items():
                nodes.setdefault(k, set()).add(v)
            shot = st.get("shot")
            if st.get("error") is not None:
                if shot is None:
                    reject = st["error"]
                else:
                    failures.append({**st["error"], "start": shot["start"], "end": shot["end"]})
                continue
            drops += st.get("drops", [])
            if shot["index"] not in shots_seen:
                shots_seen.add(shot["index"])
                stats = st.get("shot_stats", {})
                for k in frames:
                    frames[k] += stats.get(k, 0)
                text_boxes["before"] += stats.get("text_boxes_before", 0)
                text_boxes["after"] += stats.get("text_boxes_after", 0)
            transcript += [s for s in st.get("transcript", []) if s not in transcript]
            screen += [t for t in st.get("screen_text", []) if t not in screen]
            clip = st.get("clip")
            if clip is None:
                continue
            frames["in_clips"] += clip["num_frames"]
            instruction = st.get("instruction") or {}
            clips.append(
                {
                    "clip_id": clip["id"],
                    "video": clip["file"],
                    "shot": shot["index"],
                    "start": clip["start"],
                    "end": clip["end"],
                    "fps": clip["fps"],
                    "num_frames": clip["num_frames"],
                    "width": clip["width"],
                    "height": clip["height"],
                    "crop": clip["crop"],
                    "transcript": transcript_text(st.get("transcript", []), clip["start"], clip["end"]),
                    "screen_text": st.get("screen_text", []),
                    **instruction,
                }
            )
        return {
            "video_id": self.video_id,
            "source": str(self.source),
            "sha256": self.sha256,
            "config_sha": config_sha,
            "video": video_meta,
            "reject": reject,
            "shots": self.shots,
            "clips": clips,
            "drops": drops,
            "shot_failures": failures,
            "frames": frames,
            "text_boxes": text_boxes,
            "seconds": seconds,
            "nodes": {k: sorted(v) for k, v in sorted(nodes.items())},  # the Ray node(s) each step ran on
            "transcript": transcript_text(sorted(transcript, key=lambda s: s["start"]), 0.0, math.inf),
            "screen_text": screen,
        }

    def previews(self) -> dict[str, np.ndarray]:
        out = {}
        for row in self.rows:
            st = get_state(row)
            clip = st.get("clip")
            preview = row.get("preview")
            if st.get("error") is None and clip is not None and preview is not None and len(preview):
                out[clip["id"]] = np.concatenate(list(preview), axis=1)
        return out


def write_video(out: Path, video_id: str, clip_files: list[str], fps: int) -> str:
    """The kept clips of one input, one after another, letterboxed to a common size."""
    import decord

    arrays = [decord.VideoReader(str(out / f), ctx=decord.cpu(0), num_threads=1) for f in clip_files]
    frames = [vr.get_batch(list(range(len(vr)))).asnumpy() for vr in arrays]
    w = max(f.shape[2] for f in frames)
    h = max(f.shape[1] for f in frames)
    w, h = w + w % 2, h + h % 2
    rel = f"videos/{video_id}.mp4"
    write_mp4(out / rel, (letterbox(fr, w, h) for clip in frames for fr in clip), fps)
    return rel


def _valid(record: dict) -> dict:
    """The record as the training stages will read it (the foundation's schema); raises if it is not."""
    return InstructionRecord.model_validate(record).to_json()


def aggregate(out: Path, parts: list[dict]) -> dict[str, int]:
    """Write the tables and the instruction files from every part; returns their row counts."""
    import pandas as pd

    clips, rejects, clip_records, video_records = [], [], [], []
    for part in parts:
        src = part["source"]
        if part["reject"] is not None:
            rejects.append(
                {
                    "source": src,
                    "step": part["reject"]["step"],
                    "reason": part["reject"]["reason"],
                    "start": None,
                    "end": None,
                }
            )
        for d in part["drops"] + part["shot_failures"]:
            rejects.append(
                {"source": src, "step": d["step"], "reason": d["reason"], "start": d["start"], "end": d["end"]}
            )
        for c in part["clips"]:
            clips.append(
                {
                    "clip_id": c["clip_id"],
                    "video": c["video"],
                    "source": src,
                    "source_sha256": part["sha256"],
                    "start": float(c["start"]),
                    "end": float(c["end"]),
                    "fps": float(c["fps"]),
                    "num_frames": int(c["num_frames"]),
                    "width": int(c["width"]),
                    "height": int(c["height"]),
                    "transcript": c["transcript"],
                    "screen_text": list(c["screen_text"]),
                    "quality": c.get("score"),
                    "kept": bool(c.get("kept", False)),
                    "crop": [int(v) for v in c["crop"]],
                }
            )
            if c.get("record"):
                clip_records.append(_valid(c["record"]))
        if part.get("video_record"):
            video_records.append(_valid(part["video_record"]))
    clip_cols = [
        "clip_id",
        "video",
        "source",
        "source_sha256",
        "start",
        "end",
        "fps",
        "num_frames",
        "width",
        "height",
        "transcript",
        "screen_text",
        "quality",
        "kept",
        "crop",
    ]
    table = pd.DataFrame(clips, columns=clip_cols).astype({"quality": "Int64"})
    table.to_parquet(out / "clips.parquet", index=False)
    pd.DataFrame(rejects, columns=["source", "step", "reason", "start", "end"]).astype(
        {"start": "float64", "end": "float64"}
    ).to_parquet(out / "rejects.parquet", index=False)
    write_json_atomic(out / "clip_instructions.json", clip_records)
    write_json_atomic(out / "video_instructions.json", video_records)
    return {
        "clips": len(clips),
        "rejects": len(rejects),
        "clip_records": len(clip_records),
        "video_records": len(video_records),
    }


def contact_sheet(out: Path, clip_ids: list[str], path: Path) -> Path | None:
    """Stack the preview strips (original with boxes | inpainted | cropped) of ``clip_ids`` into one PNG."""
    from PIL import Image

    strips = [
        np.asarray(Image.open(out / "previews" / f"{c}.png"))
        for c in clip_ids
        if (out / "previews" / f"{c}.png").is_file()
    ]
    if not strips:
        return None
    w = max(s.shape[1] for s in strips)
    sheet = np.concatenate([np.pad(s, ((0, 4), (0, w - s.shape[1]), (0, 0))) for s in strips])
    Image.fromarray(sheet).save(path)
    return path
