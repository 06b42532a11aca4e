"""The demo: what exists of the pipeline, on the embedded sample, on a local Ray cluster, tracked in MLflow.

Run as::

    make demo                      # sets up .venv first
    vidrip demo                    # or: python jobs/demo.py --config jobs/configs/demo.yaml

Steps: build the sample corpus (skipped when it is already there with the same config), start a Ray
head on loopback (unless ``ray.address`` names a cluster), train stages 0-3 on Ray Train with DeepSpeed
(``train_config``; each stage from the previous one, through MLflow), serve the result on Ray Serve
(``serve_config``: the stage-3 adapter as ``vidrip-video`` on its stage-2 base, an API key generated for
the run), ask it about a sample video with the ``openai`` client (1 frame per second, at most 32, as in
training), evaluate the stage-2 and stage-3 models on the sample's test set with the paper's judge metrics
(``eval_config``; the judge is the same endpoint, a stand-in that says so), and record the run in MLflow
with the answer and the table as artifacts. A few CPU steps on a tiny model cannot learn the task; the
plumbing is what this shows.
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

__all__ = [
    "DemoConfig",
    "ask_endpoint",
    "demo_eval_config",
    "demo_serve_spec",
    "demo_train_config",
    "ensure_sample",
    "run_demo",
]

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
    serve_config: str = Field(default="serve_apps/tiny.yaml", description="the Serve config the demo deploys")
    serve_port: int = Field(default=8000, ge=1, le=65535, description="its HTTP port on 127.0.0.1")
    eval_config: str | None = Field(
        default="jobs/configs/eval.yaml",
        description="evaluate the served models with this config (its test set, endpoints, out and cluster are "
        "the demo's); None: no evaluation",
    )
    eval_overrides: list[str] = Field(default_factory=list, description="key=value for the evaluation config")
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


def ask_endpoint(cfg: DemoConfig, spec, endpoint, video: str, question: str) -> dict:
    """Ask the deployed ``spec`` at ``endpoint`` about ``video`` (a path under the media root) with the
    ``openai`` client."""
    import openai

    client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, timeout=300)
    model = "vidrip-video" if "vidrip-video" in spec.config.adapters else spec.config.served_name
    started = time.perf_counter()
    reply = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": video}},
                    {"type": "text", "text": question},
                ],
            }
        ],
        max_tokens=cfg.max_new_tokens,
    )
    seconds = time.perf_counter() - started
    shown = reply.model_extra.get("media") or {}
    return {
        "answer": reply.choices[0].message.content,
        "served_model": model,
        "prompt_tokens": reply.usage.prompt_tokens,
        "completion_tokens": reply.usage.completion_tokens,
        "frames": shown.get("frames", 0),
        "frame_timestamps": shown.get("frame_timestamps", []),
        "request_seconds": round(seconds, 3),
    }


def demo_serve_spec(cfg: DemoConfig, sample_dir: Path, adapter: str | None):
    """``cfg.serve_config`` set to serve ``adapter`` (or the demo's model when nothing was trained) over the sample."""
    from vidrip.serve.launch import load_serve_yaml

    overrides = [f"media.root={sample_dir}", f"frames={json.dumps(cfg.frames.model_dump())}"]
    if adapter is not None:
        overrides += ["model.checkpoint=null", f"adapters={json.dumps({'vidrip-video': adapter})}"]
    else:
        overrides += [f"model={json.dumps(cfg.model.model_dump())}", "adapters={}"]
    spec = load_serve_yaml(cfg.serve_config, overrides)
    spec.port = cfg.serve_port
    return spec


def demo_eval_config(cfg: DemoConfig, workdir: Path, sample_dir: Path, served: list[str], revisions: dict[str, str]):
    """``cfg.eval_config`` set to the demo's sample, work directory, store and endpoint; only the models the
    endpoint serves (``served``), each tagged with the checkpoint behind it (``revisions``)."""
    from vidrip.config import load_config
    from vidrip.eval.config import EvalConfig

    ev = load_config(EvalConfig, cfg.eval_config, cfg.eval_overrides)
    models = [
        m.model_copy(update={"revision": revisions.get(m.model, m.revision)})
        for m in ev.models
        if m.base_url is not None or m.model in served
    ]
    if not models:
        raise ValueError(f"{cfg.eval_config}: none of its models is served by the demo ({', '.join(served)})")
    return ev.model_copy(
        update={
            "test_set": str(sample_dir / DATASET_FILES["test"]),
            "media_root": str(sample_dir),
            "models": models,
            "out": str(workdir / "eval"),
            "cache_dir": str(workdir / "eval" / "cache"),
            "workdir": str(workdir),
            "tracking": cfg.tracking,
            "ray": cfg.ray,
            "serve": None,
        }
    )


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
    # a bad training, serving or evaluation config fails here, not after the Ray head is up
    train = demo_train_config(cfg, workdir, sample_dir) if cfg.train_config else None
    demo_serve_spec(cfg, sample_dir, adapter=None)
    if cfg.eval_config:
        demo_eval_config(cfg, workdir, sample_dir, ["vidrip-base", "vidrip-video"], {})

    with (
        ray_session(cfg.ray, workdir),
        job_run("demo", cfg, tracking=cfg.tracking, workdir=workdir, dataset=sample_dir) as run,
    ):
        import mlflow

        from vidrip.eval.run import evaluate
        from vidrip.serve.launch import deploy

        stages = run_stages(train) if train is not None else []
        adapter = stages[-1].checkpoint if stages else None
        spec = demo_serve_spec(cfg, sample_dir, adapter)
        evaluation = None
        with deploy(spec, workdir) as endpoint:
            result = ask_endpoint(cfg, spec, endpoint, item.video_name, item.question)
            if cfg.eval_config:
                by_stage = {s.stage: f"MLflow run {s.run_id} ({s.checkpoint})" for s in stages}
                revisions = {"vidrip-base": by_stage.get(2, f"{cfg.model.preset} (random weights)")}
                if 3 in by_stage:
                    revisions["vidrip-video"] = by_stage[3]
                ev_cfg = demo_eval_config(cfg, workdir, sample_dir, spec.config.model_names(), revisions)
                evaluation = evaluate(ev_cfg, endpoint)
        record = {
            "video": item.video_name,
            "question": item.question,
            "reference_answer": item.answer,
            "model": adapter or f"{cfg.model.preset} (random weights)",
            "stages": [s.model_dump() for s in stages],
            "note": (
                f"{cfg.model.preset} preset after {sum(s.global_step for s in stages)} CPU training steps: "
                "too few to learn the task; the plumbing is what this shows"
                if stages
                else f"{cfg.model.preset} preset with random weights: the answer is noise"
            ),
            **result,
        }
        if evaluation is not None:
            record["evaluation"] = {
                "table": evaluation.table,
                "run_id": evaluation.run_id,
                "calls": evaluation.stats,
                "seconds": evaluation.seconds,
                "paths": evaluation.paths,
            }
            mlflow.log_text(evaluation.table, "eval_table.md")
        mlflow.log_dict(record, "answer.json")
        keys = ("prompt_tokens", "completion_tokens", "frames", "request_seconds")
        mlflow.log_metrics({k: float(result[k]) for k in keys})
    (workdir / "demo_answer.json").write_text(json.dumps(record, indent=1))
    return {
        "sample_dir": str(sample_dir),
        "tracking_uri": resolve_tracking_uri(cfg.tracking, workdir),
        "run_id": run.info.run_id,
        "answer_file": str(workdir / "demo_answer.json"),
        **record,
    }
