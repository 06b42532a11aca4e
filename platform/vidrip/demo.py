"""The demo: what exists of the pipeline, on the embedded sample, on a local Ray cluster, tracked in MLflow.

Run as::

    make demo                      # sets up .venv first
    vidrip demo                    # or: python jobs/demo.py --config jobs/configs/demo.yaml

Steps: build the sample corpus (skipped when it is already there with the same config), start a Ray
head on loopback (unless ``ray.address`` names a cluster), train stages 0-3 on Ray Train with DeepSpeed
(``train_config``; each stage from the previous one, through MLflow), answer a test question about a
sample video with the last stage's model on a Ray worker (1 frame per second, at most 32, as in
training), and record the run in MLflow with the answer as an artifact. A few CPU steps on a tiny
model cannot learn the task; the plumbing is what this shows.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.data.sample.build import DATASET_FILES, SampleConfig, build_sample
from vidrip.data.schema import TestRecord, load_records
from vidrip.data.video import FramePolicy
from vidrip.model.loading import ModelConfig
from vidrip.runtime import RayConfig, ray_session
from vidrip.tracking import TrackingConfig, job_run, resolve_tracking_uri
from vidrip.train.chain import run_stages

__all__ = ["DemoConfig", "answer_on_ray", "demo_train_config", "ensure_sample", "run_demo"]

log = logging.getLogger(__name__)


class DemoConfig(StrictConfig):
    """The demo job. ``workdir`` holds the MLflow store and Ray's files; ``sample.out`` the corpus."""

    workdir: str = "work"
    sample: SampleConfig = Field(default_factory=SampleConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    frames: FramePolicy = Field(default_factory=FramePolicy)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    train_config: str | None = Field(
        default="jobs/configs/train_tiny.yaml",
        description="train the stages of this config (in the demo's workdir, sample and cluster) and answer "
        "with the last stage's model; None: answer with `model` as it is",
    )
    question_index: int = Field(default=0, ge=0)
    max_new_tokens: int = Field(default=48, ge=1, le=1024)


def ensure_sample(cfg: SampleConfig) -> Path:
    """Build the sample unless ``cfg.out`` already holds one built with the same config."""
    out = Path(cfg.out)
    meta = out / "metadata.json"
    if meta.is_file() and json.loads(meta.read_text()).get("config") == cfg.model_dump():
        log.info("sample already built in %s (same config): skipping", out)
        return out
    build_sample(cfg)
    return out


def _answer_task(model_cfg: dict, video: str, question: str, frames_cfg: dict, max_new_tokens: int) -> dict:
    """Runs on a Ray worker: load the model, sample frames as in training, answer."""
    from vidrip.data.video import read_frames
    from vidrip.model.generate import answer
    from vidrip.model.loading import load_model, load_processor

    start = time.perf_counter()
    mcfg = ModelConfig.model_validate(model_cfg)
    model, processor = load_model(mcfg), load_processor(mcfg)
    sampled = read_frames(video, FramePolicy.model_validate(frames_cfg), size=mcfg.spec.image_size)
    loaded = time.perf_counter()
    reply = answer(model, processor, question, frames=sampled.array, max_new_tokens=max_new_tokens)
    return {
        "answer": reply.text,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "frames": len(sampled.indices),
        "frame_timestamps": [round(float(t), 3) for t in sampled.timestamps],
        "load_seconds": round(loaded - start, 3),
        "generate_seconds": round(time.perf_counter() - loaded, 3),
    }


def answer_on_ray(cfg: DemoConfig, model: ModelConfig, video: Path, question: str) -> dict:
    import ray

    task = ray.remote(num_cpus=1)(_answer_task)
    return ray.get(task.remote(model.model_dump(), str(video), question, cfg.frames.model_dump(), cfg.max_new_tokens))


def demo_train_config(cfg: DemoConfig, workdir: Path, sample_dir: Path):
    """``cfg.train_config``'s stages, set to run in the demo's work directory, sample and cluster."""
    from vidrip.config import load_config
    from vidrip.train.chain import TrainConfig

    return load_config(TrainConfig, cfg.train_config).model_copy(
        update={
            "workdir": str(workdir),
            "data_root": str(sample_dir),
            "model": cfg.model,
            "ray": cfg.ray,
            "tracking": cfg.tracking,
        }
    )


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo; returns a summary (paths, run id, answer)."""
    workdir = Path(cfg.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    sample_dir = ensure_sample(cfg.sample)
    tests = load_records(sample_dir / DATASET_FILES["test"], TestRecord, media_root=sample_dir).records
    if cfg.question_index >= len(tests):
        raise ValueError(f"question_index={cfg.question_index}: the sample has {len(tests)} test questions")
    item = tests[cfg.question_index]
    # a bad training config fails here, not after the Ray head is up
    train = demo_train_config(cfg, workdir, sample_dir) if cfg.train_config else None

    with (
        ray_session(cfg.ray, workdir),
        job_run("demo", cfg, tracking=cfg.tracking, workdir=workdir, dataset=sample_dir) as run,
    ):
        import mlflow

        stages = run_stages(train) if train is not None else []
        model = cfg.model.model_copy(update={"checkpoint": stages[-1].checkpoint}) if stages else cfg.model
        result = answer_on_ray(cfg, model, sample_dir / item.video_name, item.question)
        record = {
            "video": item.video_name,
            "question": item.question,
            "reference_answer": item.answer,
            "model": model.checkpoint or f"{cfg.model.preset} (random weights)",
            "stages": [s.model_dump() for s in stages],
            "note": (
                f"{cfg.model.preset} preset after {sum(s.global_step for s in stages)} CPU training steps: "
                "too few to learn the task; the plumbing is what this shows"
                if stages
                else f"{cfg.model.preset} preset with random weights: the answer is noise"
            ),
            **result,
        }
        mlflow.log_dict(record, "answer.json")
        keys = ("prompt_tokens", "completion_tokens", "frames", "load_seconds", "generate_seconds")
        mlflow.log_metrics({k: float(result[k]) for k in keys})
    (workdir / "demo_answer.json").write_text(json.dumps(record, indent=1))
    return {
        "sample_dir": str(sample_dir),
        "tracking_uri": resolve_tracking_uri(cfg.tracking, workdir),
        "run_id": run.info.run_id,
        "answer_file": str(workdir / "demo_answer.json"),
        **record,
    }
