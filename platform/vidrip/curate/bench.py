"""Curation throughput: the Ray Data pipeline against a plain single-process loop over the same steps.

Run as::

    make bench
    python jobs/bench_curate.py --config jobs/configs/bench_curate.yaml [sample.raw_videos=8]

Both modes curate the same raw videos with the same step classes and settings, into their own output
folders, LLM step off (it waits on a remote endpoint, which neither mode can speed up):

- ``loop``: one process (spawned, ``OMP_NUM_THREADS=1`` as in a Ray worker holding one CPU), every step
  in it once (:class:`vidrip.curate.pipeline.WholeVideo`, as one actor of the ``whole`` layout), videos
  one after another;
- ``ray``: :func:`vidrip.curate.pipeline.run_curation` on a local Ray cluster of ``ray.num_cpus`` CPUs.

Measured in one run: end-to-end frames/s (decoded frames over the seconds from the first step's model
load to the last input's part file) and seconds per step, for both; the speed-up (target on 2 CPUs:
>= 1.6x); the decode step (decode + shot detection) against raw decord decoding of the same frames at
the same size (target: <= 25% overhead); and the share of decoded frames that reach the heavy models.
Results go to ``<workdir>/bench_curate.json`` and ``bench_curate.md`` and an MLflow run.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from pathlib import Path

from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.curate.detector_train import DetectorTrainConfig
from vidrip.curate.pipeline import CurateConfig
from vidrip.data.sample.build import SampleConfig
from vidrip.runtime import RayConfig, RayPorts
from vidrip.tracking import TrackingConfig

__all__ = ["BenchCurateConfig", "format_results", "run_bench", "run_loop"]

log = logging.getLogger(__name__)


def _bench_sample() -> SampleConfig:
    return SampleConfig(
        out="work/bench/curate_sample",
        raw_videos=24,
        stage0_images=0,
        stage1_images=0,
        stage2_clips=0,
        stage3_videos=0,
        test_videos=0,
    )


class BenchCurateConfig(StrictConfig):
    """What to measure (see the module docstring)."""

    workdir: str = "work/bench"
    sample: SampleConfig = Field(default_factory=_bench_sample)
    detector: DetectorTrainConfig = Field(
        default_factory=lambda: DetectorTrainConfig(sample="work/sample", out="work/bench/detector"),
        description="trained first if curate.detect.weights does not exist",
    )
    curate: CurateConfig = Field(
        default_factory=lambda: CurateConfig(
            inputs=["work/bench/curate_sample/raw"],
            instructions=False,
            detect={"weights": "work/bench/detector/weights/best.pt"},
        )
    )
    modes: list[str] = Field(default=["loop", "ray"], min_length=1)
    decode_repeats: int = Field(default=5, ge=1)
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=2, ports=RayPorts().shifted(2000)))
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def run_loop(cfg: CurateConfig) -> dict:
    """The pipeline's steps in this process, one input after another; returns seconds and parts."""
    import torch

    from vidrip.curate.inputs import resolve_inputs
    from vidrip.curate.outputs import VideoOutcome
    from vidrip.curate.pipeline import WholeVideo, _Finisher, input_row, processing_sha, sha256_file, video_id

    torch.set_num_threads(1)
    out = Path(cfg.out).resolve()
    start = time.perf_counter()
    whole = WholeVideo(cfg, str(out))
    finisher = _Finisher(cfg, out, processing_sha(cfg))
    parts = []
    for path in resolve_inputs(cfg.inputs):
        sha = sha256_file(path)
        vid = video_id(path, sha)
        outcome = VideoOutcome(vid, path, sha or "")
        for row in whole(input_row(vid, path)):
            outcome.add(row)
        parts.append(finisher(outcome))
    return {"seconds": time.perf_counter() - start, "parts": parts}


def _loop_child(cfg_json: str) -> dict:
    from vidrip.runtime import apply_offline_env

    apply_offline_env()
    return run_loop(CurateConfig.model_validate_json(cfg_json))


def _summary(parts: list[dict], seconds: float) -> dict:
    from vidrip.curate.metrics import curation_metrics

    m = curation_metrics(parts, {"clips": 0, "clip_records": 0, "video_records": 0, "rejects": 0}, {}, seconds)
    return {
        "seconds": round(seconds, 3),
        "frames_decoded": int(m["frames.decoded"]),
        "frames_per_second": round(m["frames.decoded"] / seconds, 3),
        "clips": sum(len(p["clips"]) for p in parts),
        "heavy_model_frame_share": m["heavy_model_frame_share"],
        "step_seconds": {k.split(".", 1)[1]: v for k, v in m.items() if k.startswith("seconds.")},
    }


def decode_overhead(cfg: CurateConfig, repeats: int) -> dict:
    """The shots step (decode + shot detection) against raw decord decoding of the same frames."""
    import decord
    import numpy as np

    from vidrip.curate.inputs import resolve_inputs
    from vidrip.curate.probe import probe_video
    from vidrip.curate.shots import Shots, decode_grid, decode_size

    shots = Shots(cfg.shots, cfg.clips.fps)
    step, raw, frames = [], [], 0
    for path in resolve_inputs(cfg.inputs):
        video = probe_video(path, cfg.probe)
        row = {"key": "v", "path": str(path), "state": json.dumps({"video": video})}
        clip_idx, detect_idx = decode_grid(video, cfg.clips.fps, cfg.shots)
        order = np.unique(np.concatenate([clip_idx, detect_idx])).tolist()
        w, h = decode_size(video["width"], video["height"], cfg.shots.max_side)
        frames += len(order)
        for _ in range(repeats):
            t = time.perf_counter()
            shots(row)
            step.append(time.perf_counter() - t)
            t = time.perf_counter()
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, width=w, height=h)
            for i in range(0, len(order), cfg.shots.chunk_frames):
                vr.get_batch(order[i : i + cfg.shots.chunk_frames]).asnumpy()
            raw.append(time.perf_counter() - t)
    n = len(step) // repeats
    step_s = statistics.median(step) * n
    raw_s = statistics.median(raw) * n
    return {
        "frames": frames,
        "shots_step_frames_per_second": round(frames / step_s, 1),
        "raw_decord_frames_per_second": round(frames / raw_s, 1),
        "overhead": round(step_s / raw_s - 1, 4),
    }


def ratios(out: dict) -> list[dict]:
    """The benchmark's ratios for ``make bench``'s report."""
    rows = []
    if "speedup" in out:
        speedup = out["speedup"]
        rows.append(
            {"measure": "Ray Data / single-process loop", "value": speedup, "target": ">= 1.6", "met": speedup >= 1.6}
        )
    overhead = out["decode"]["overhead"]
    rows.append(
        {
            "measure": "decode step overhead vs raw decord",
            "value": overhead,
            "target": "<= 0.25",
            "met": overhead <= 0.25,
        }
    )
    for mode, r in out["results"].items():
        share = r["heavy_model_frame_share"]
        rows.append(
            {"measure": f"{mode}: share of frames reaching the models", "value": share, "target": None, "met": None}
        )
    return rows


def format_results(out: dict) -> str:
    r = out["results"]
    lines = ["mode   seconds  frames/s  clips  heavy-model share"]
    for mode in ("loop", "ray"):
        if mode in r:
            x = r[mode]
            lines.append(
                f"{mode:5s}  {x['seconds']:7.1f}  {x['frames_per_second']:8.2f}  {x['clips']:5d}  "
                f"{x['heavy_model_frame_share']:.0%}"
            )
    if "speedup" in out:
        lines.append(f"Ray Data vs the single-process loop: {out['speedup']:.2f}x (target >= 1.6x on 2 CPUs)")
    d = out["decode"]
    lines.append(
        f"decode step {d['shots_step_frames_per_second']:.0f} frames/s vs raw decord "
        f"{d['raw_decord_frames_per_second']:.0f} frames/s: overhead {d['overhead']:.0%} (target <= 25%)"
    )
    steps = sorted({s for x in r.values() for s in x["step_seconds"]})
    lines.append("\nseconds per step " + "  ".join(f"{m:>6s}" for m in r))
    lines += [f"  {s:14s} " + "  ".join(f"{r[m]['step_seconds'].get(s, 0):6.1f}" for m in r) for s in steps]
    return "\n".join(lines)


def run_bench(cfg: BenchCurateConfig) -> dict:
    """Measure every mode; returns (and writes) the results."""

    from vidrip.childproc import run_in_child
    from vidrip.curate.detector_train import train_detector
    from vidrip.curate.pipeline import run_curation
    from vidrip.data.sample.build import build_sample
    from vidrip.runtime import ray_session
    from vidrip.tracking import Lineage

    workdir = Path(cfg.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    lineage = Lineage(cfg.tracking, workdir)
    meta = Path(cfg.sample.out) / "metadata.json"
    if not meta.is_file() or json.loads(meta.read_text())["config"] != cfg.sample.model_dump():
        shutil.rmtree(cfg.sample.out, ignore_errors=True)
        build_sample(cfg.sample)
    if not Path(cfg.curate.detect.weights).is_file():
        if not (Path(cfg.detector.sample) / "metadata.json").is_file():
            build_sample(SampleConfig(out=cfg.detector.sample))
        trained = train_detector(cfg.detector.model_copy(update={"tracking": cfg.tracking}), workdir, lineage)
        cfg.curate.detect.weights = str(trained.weights)
    results: dict[str, dict] = {}
    with lineage.run("bench", cfg, dataset=cfg.sample.out, run_name="bench_curate") as tracked:
        decode = decode_overhead(cfg.curate, cfg.decode_repeats)
        for mode in cfg.modes:
            out = workdir / f"curate_{mode}"
            shutil.rmtree(out, ignore_errors=True)
            run_cfg = cfg.curate.model_copy(update={"out": str(out), "workdir": str(workdir), "tracking": cfg.tracking})
            log.info("bench: curation, %s", mode)
            if mode == "loop":
                # one thread per library, as in a Ray worker holding one CPU
                loop = run_in_child(_loop_child, run_cfg.model_dump_json(), threads="1", what="the loop")
                results[mode] = _summary(loop["parts"], loop["seconds"])
            elif mode == "ray":
                with ray_session(cfg.ray, workdir):
                    res = run_curation(run_cfg, progress=False, lineage=lineage.child(tracked.run_id))
                parts = [json.loads(p.read_text()) for p in sorted((out / "parts").glob("*.json"))]
                results[mode] = _summary(parts, res.metrics["pipeline_seconds"])
            else:
                raise ValueError(f"modes: unknown mode {mode!r} (loop, ray)")
        out = {"results": results, "decode": decode}
        if {"loop", "ray"} <= set(results):
            out["speedup"] = round(results["loop"]["seconds"] / results["ray"]["seconds"], 3)
        flat = {f"{m}.{k}": v for m, x in results.items() for k, v in x.items() if isinstance(v, int | float)}
        tracked.log_metrics(
            flat
            | {f"decode.{k}": v for k, v in decode.items()}
            | ({"speedup": out["speedup"]} if "speedup" in out else {})
        )
        (workdir / "bench_curate.json").write_text(json.dumps(out, indent=1))
        (workdir / "bench_curate.md").write_text(f"# Curation benchmark\n\n```\n{format_results(out)}\n```\n")
        tracked.log_artifact(workdir / "bench_curate.md")
    return out
