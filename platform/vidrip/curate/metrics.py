"""What a curation run reports to MLflow: counts in and out of each step, drops by reason, seconds per
step, how many frames reach the heavy models, OCR text before and after inpainting, and the outputs
(tables, card, Croissant, contact sheet) as artifacts.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

__all__ = ["curation_metrics", "log_curation", "reason_kind"]

ARTIFACTS = (
    "clips.parquet",
    "rejects.parquet",
    "clip_instructions.json",
    "video_instructions.json",
    "README.md",
    "croissant.json",
)


def reason_kind(reason: str) -> str:
    """The stable head of a reason ("too short: 0.10 s < 1.00 s" -> "too_short"), as a metric name."""
    head = re.split(r"[:(]", reason, maxsplit=1)[0].strip().lower()
    return re.sub(r"[^a-z0-9]+", "_", head).strip("_") or "other"


def step_counts(parts: list[dict], rejected: Counter) -> dict[str, int]:
    """What went into and came out of each step: ``count.<step>.in`` / ``.out``.

    Units: input videos (probe, transcribe, and into shots), shots (out of shots), keyframes (detect),
    ok keyframes read by OCR (text), clip frames (trim: in; frames kept in clips: out), clips (clips,
    instruct: in written, out kept by the LLM)."""
    n = len(parts)
    probed = n - rejected.get("probe", 0)
    transcribed = probed - rejected.get("transcribe", 0)
    frames = Counter()
    for p in parts:
        frames.update(p["frames"])
    clips = sum(len(p["clips"]) for p in parts)
    return {
        "count.probe.in": n,
        "count.probe.out": probed,
        "count.transcribe.in": probed,
        "count.transcribe.out": transcribed,
        "count.shots.in": transcribed,
        "count.shots.out": sum(p["shots"] or 0 for p in parts),
        "count.detect.in": frames["keyframes"],
        "count.detect.out": frames["keyframes_ok"],
        "count.text.in": frames["keyframes_ok"],
        "count.text.out": frames["keyframes_ok"],
        "count.trim.in": frames["clip_frames"],
        "count.trim.out": frames["in_clips"],
        "count.clips.out": clips,
        "count.instruct.in": clips,
        "count.instruct.out": sum(1 for p in parts for c in p["clips"] if c.get("kept")),
    }


def curation_metrics(parts: list[dict], counts: dict[str, int], croissant: dict[str, int], seconds: float) -> dict:
    """Flat metrics of a run over every input's part."""
    m: dict[str, float] = {"inputs": len(parts), "wall_seconds": round(seconds, 3)}
    rejected = Counter(p["reject"]["step"] for p in parts if p["reject"])
    m["inputs_rejected"] = sum(rejected.values())
    m["inputs_with_clips"] = sum(1 for p in parts if p["clips"])
    for step, n in rejected.items():
        m[f"rejected_inputs.{step}"] = n
    reasons = Counter(reason_kind(p["reject"]["reason"]) for p in parts if p["reject"])
    for kind, n in reasons.items():
        m[f"rejected_inputs_by_reason.{kind}"] = n
    drop_seconds: Counter = Counter()
    for p in parts:
        for d in p["drops"] + p["shot_failures"]:
            drop_seconds[reason_kind(d["reason"])] += d["end"] - d["start"]
    for kind, s in drop_seconds.items():
        m[f"dropped_seconds.{kind}"] = round(s, 3)
    m["shot_failures"] = sum(len(p["shot_failures"]) for p in parts)
    m["shots"] = sum(p["shots"] or 0 for p in parts)
    frames = Counter()
    for p in parts:
        frames.update(p["frames"])
    for k in ("decoded", "clip_frames", "keyframes", "keyframes_ok", "in_clips"):
        m[f"frames.{k}"] = frames[k]
    m["heavy_model_frame_share"] = round(frames["keyframes"] / frames["decoded"], 4) if frames["decoded"] else 0.0
    m["text_boxes_before"] = sum(p["text_boxes"]["before"] for p in parts)
    m["text_boxes_after"] = sum(p["text_boxes"]["after"] for p in parts)
    step_seconds = Counter()
    for p in parts:
        step_seconds.update(p["seconds"])
    for step, s in step_seconds.items():
        m[f"seconds.{step}"] = round(s, 3)
    m |= step_counts(parts, rejected)
    m["clips"] = counts["clips"]
    m["clips_kept"] = sum(1 for p in parts for c in p["clips"] if c.get("kept"))
    m["clip_records"] = counts["clip_records"]
    m["video_records"] = counts["video_records"]
    m["rejects_rows"] = counts["rejects"]
    for name, n in croissant.items():
        m[f"croissant_records.{name}"] = n
    return m


def log_curation(
    run, parts: list[dict], counts: dict, croissant: dict, sheet: Path | None, out: Path, seconds: float
) -> dict:
    """Log :func:`curation_metrics` and the artifacts to ``run`` (a :class:`vidrip.tracking.TrackedRun`);
    returns the metrics."""
    metrics = curation_metrics(parts, counts, croissant, seconds)
    run.log_metrics(metrics)
    for name in ARTIFACTS:
        if (out / name).is_file():
            run.log_artifact(out / name, artifact_path="curated")
    if sheet is not None:
        run.log_artifact(sheet)
    return metrics
