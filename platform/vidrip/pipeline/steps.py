"""The pipeline's steps, each a job of its own (curation, training, sweep, ...) set into one work directory.

Every step is a pair: ``<step>_config`` builds the step's typed job config from its YAML, its overrides and
what the earlier steps produced (fails at start-up, before any work, when a config is wrong), and
``run_<step>`` runs it and returns its outputs (paths, run ids; JSON). :mod:`vidrip.pipeline.run` keys,
skips and tracks them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from vidrip.config import load_config
from vidrip.pipeline.config import PipelineConfig, StepConfig

__all__ = [
    "curate_config",
    "detector_config",
    "eval_config",
    "run_curate",
    "run_detector",
    "run_eval",
    "run_merge",
    "run_sample",
    "run_serve",
    "run_sweep_step",
    "run_train",
    "serve_spec",
    "sweep_config",
    "train_config",
]

log = logging.getLogger(__name__)
CURATED_CLIPS = "clip_instructions.json"
CURATED_VIDEOS = "video_instructions.json"


def _workdir(cfg: PipelineConfig) -> Path:
    return Path(cfg.workdir).resolve()


def run_sample(cfg: PipelineConfig, lineage) -> dict:
    """The embedded sample (built unless already there with the same config), and its fingerprint."""
    from vidrip.data.sample.build import build_sample

    if cfg.sample is None:
        if cfg.sample_dir is None:
            raise ValueError("sample: null needs sample_dir, a folder shaped like the embedded sample")
        out = Path(cfg.sample_dir).resolve()
        if not out.is_dir():
            raise FileNotFoundError(f"sample_dir: {out} is not a folder")
    else:
        sample = cfg.sample.model_copy(update={"out": str(Path(cfg.sample.out).resolve())})
        out = Path(sample.out)
        meta = out / "metadata.json"
        if not (meta.is_file() and json.loads(meta.read_text()).get("config") == sample.model_dump()):
            build_sample(sample)
    return {"dir": str(out), "fingerprint": lineage.fingerprint(out, exclude=("metadata.json",))}


# --------------------------------------------------------------------------------------------------- detector


def detector_config(cfg: PipelineConfig, sample_dir: str):
    from vidrip.curate.detector_train import DetectorTrainConfig

    step = cfg.detector
    return load_config(DetectorTrainConfig, step.config, step.overrides).model_copy(
        update={
            "workdir": str(_workdir(cfg)),
            "sample": sample_dir,
            "out": str(_workdir(cfg) / "detector"),
            "tracking": cfg.tracking,
        }
    )


def run_detector(det_cfg, lineage) -> dict:
    from vidrip.curate.detector_train import train_detector

    result = train_detector(det_cfg, lineage=lineage)
    return {
        "weights": str(result.weights),
        "map50": result.map50,
        "run_id": result.run_id,
        "paths": [str(result.weights)],
    }


# --------------------------------------------------------------------------------------------------- curation


def instruct_spec(cfg: PipelineConfig):
    """The Serve app deployed as the curation step's instruction LLM (None: curate's own llm section), as
    an application of its own (``<name>-instruct`` at ``/instruct``), never in place of the served one."""
    from vidrip.serve.launch import load_serve_yaml

    if cfg.instruct_llm is None:
        return None
    spec = load_serve_yaml(cfg.instruct_llm.config, cfg.instruct_llm.overrides)
    spec.port = cfg.serve_port or spec.port
    spec.name = f"{spec.name}-instruct"
    spec.route_prefix = f"{spec.route_prefix.rstrip('/')}/instruct"
    return spec


def curate_config(cfg: PipelineConfig, sample_dir: str, detector_weights: str | None):
    from vidrip.curate.pipeline import CurateConfig

    step = cfg.curate
    cur = load_config(CurateConfig, step.config, step.overrides)
    update = {
        "inputs": [str(Path(sample_dir) / "raw")],
        "out": str(_workdir(cfg) / "curated"),
        "workdir": str(_workdir(cfg)),
        "ray": cfg.ray,
        "tracking": cfg.tracking,
    }
    if detector_weights is not None:
        update["detect"] = cur.detect.model_copy(update={"weights": detector_weights})
    return cur.model_copy(update=update)


def run_curate(cur_cfg, spec, workdir: Path, lineage) -> dict:
    """Curate, asking ``spec`` (deployed for the step, then deleted) for the instructions when given."""
    import contextlib

    from vidrip.curate.pipeline import check_ready, run_curation
    from vidrip.serve.launch import deploy

    with deploy(spec, workdir) if spec is not None else contextlib.nullcontext() as endpoint:
        if endpoint is not None:
            llm = cur_cfg.llm.model_copy(
                update={"base_url": endpoint.base_url, "api_key": endpoint.api_key, "model": spec.config.served_name}
            )
            cur_cfg = cur_cfg.model_copy(update={"llm": llm})
        check_ready(cur_cfg)
        result = run_curation(cur_cfg, lineage=lineage)
    out = Path(result.out)
    clips = json.loads((out / CURATED_CLIPS).read_text())
    videos = json.loads((out / CURATED_VIDEOS).read_text())
    if not clips and not videos:
        log.warning("curation kept no clip and no video: training uses the sample's own data alone")
    return {
        "out": str(out),
        "clip_records": len(clips),
        "video_records": len(videos),
        "run_id": result.run_id,
        "paths": [str(out / CURATED_CLIPS), str(out / CURATED_VIDEOS)],
    }


# --------------------------------------------------------------------------------------------------- training


def _with_curated(data: list, curated_out: str | None, file: str) -> list[dict]:
    sources = [d.model_dump() for d in data]
    if curated_out is not None:
        sources.append({"file": file, "root": curated_out})
    return sources


def train_config(cfg: PipelineConfig, sample_dir: str, curated_out: str | None, run_name: str):
    """Stages 0-3 on the sample's data, with the curated clips joining stage 2's mixture and the curated
    videos stage 3's (as the paper mixes its curated data into the stages)."""
    from vidrip.train.chain import TrainConfig

    step = cfg.train
    tc = load_config(TrainConfig, step.config, step.overrides)
    overrides = {i: dict(o) for i, o in tc.stage_overrides.items()}
    for index, file in ((2, CURATED_CLIPS), (3, CURATED_VIDEOS)):
        if index in tc.stages:
            data = _with_curated(tc.spec(index).data, curated_out, file)
            overrides[index] = {**overrides.get(index, {}), "data": data}
    return TrainConfig.model_validate(
        {
            **tc.model_dump(),
            "workdir": str(_workdir(cfg)),
            "data_root": sample_dir,
            "model": cfg.model.model_dump(),
            "ray": cfg.ray.model_dump(),
            "tracking": cfg.tracking.model_dump(),
            "run_name": run_name,
            "stage_overrides": overrides,
        }
    )


def run_train(train_cfg, lineage) -> dict:
    from vidrip.train.chain import run_stages

    outcomes = run_stages(train_cfg, lineage)
    stages = {str(o.stage): {"run_id": o.run_id, "checkpoint": o.checkpoint, "steps": o.global_step} for o in outcomes}
    return {
        "stages": stages,
        "run_name": train_cfg.run_name,
        "paths": [o.checkpoint for o in outcomes],
    }


def sweep_config(cfg: PipelineConfig, sample_dir: str, stage2_run: str, curated_out: str | None, name: str):
    """The LoRA sweep of stage 3, from this pipeline's stage-2 run (named by its MLflow run id), on stage 3's
    data."""
    from vidrip.sweep.run import SweepConfig
    from vidrip.train.stages import default_stage

    step = cfg.sweep
    sc = load_config(SweepConfig, step.config, step.overrides)
    overrides = dict(sc.stage_overrides)
    overrides.setdefault("data", _with_curated(default_stage(3).data, curated_out, CURATED_VIDEOS))
    return SweepConfig.model_validate(
        {
            **sc.model_dump(),
            "workdir": str(_workdir(cfg)),
            "data_root": sample_dir,
            "init_from": stage2_run,
            "model": cfg.model.model_dump(),
            "name": name,
            "stage_overrides": overrides,
            "ray": cfg.ray.model_dump(),
            "tracking": cfg.tracking.model_dump(),
        }
    )


def run_sweep_step(sweep_cfg, lineage) -> dict:
    from vidrip.sweep.run import run_sweep

    result = run_sweep(sweep_cfg, lineage)
    if result.best is None:
        raise RuntimeError(f"sweep {result.name}: no trial finished with a checkpoint; see {result.table_path}")
    return {
        "best_checkpoint": result.best.checkpoint,
        "best_trial": result.best.trial,
        "best_eval_loss": result.best.best_eval_loss,
        "registered_version": result.registered_version,
        "run_id": result.run_id,
        "paths": [result.best.checkpoint],
    }


def run_merge(adapter: str, out: Path, step_run_id: str, lineage) -> dict:
    """The served adapter folded into its base: a standalone checkpoint (for servers without LoRA)."""
    from vidrip.train.merge import merge_adapter

    merged = merge_adapter(adapter, out)
    version = lineage.register("vidrip-video-merged", merged, step_run_id, tags={"vidrip.adapter": adapter})
    return {
        "merged": str(merged),
        "adapter": adapter,
        "registered_version": str(version.version),
        "paths": [str(merged)],
    }


# ------------------------------------------------------------------------------------------------ serve, eval


def serve_spec(cfg: PipelineConfig, sample_dir: str, base: str | None, adapter: str | None):
    """The Serve app: the stage-2 model (``base``; None: the adapter's recorded base) as ``served_name`` and
    the chosen stage-3 adapter as ``vidrip-video`` on it (one replica answers both); without an adapter,
    ``base`` (None: the untrained model) alone. Media from the sample."""
    from vidrip.serve.launch import load_serve_yaml

    overrides = [*cfg.serve.overrides, f"media.root={sample_dir}"]
    if adapter is not None:
        overrides += [f"model.checkpoint={json.dumps(base)}", f"adapters={json.dumps({'vidrip-video': adapter})}"]
    else:
        model = cfg.model.model_copy(update={"checkpoint": base})
        overrides += [f"model={json.dumps(model.model_dump())}", "adapters={}"]
    spec = load_serve_yaml(cfg.serve.config, overrides)
    spec.port = cfg.serve_port or spec.port
    return spec


def run_serve(spec, workdir: Path, key_file: Path):
    """Deploy ``spec`` (it stays up after the job); the API key goes to ``key_file`` (mode 0600)."""
    from vidrip.serve.launch import deploy_detached

    endpoint = deploy_detached(spec, workdir)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    if endpoint.api_key:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(endpoint.api_key)
    outputs = {
        "url": endpoint.url,
        "base_url": endpoint.base_url,
        "models": spec.config.model_names(),
        "api_key_file": str(key_file) if endpoint.api_key else None,
        "paths": [],
    }
    return endpoint, outputs


def eval_config(cfg: PipelineConfig, step: StepConfig, sample_dir: str, served: list[str], revisions: dict):
    """The evaluation config set to the sample's test set and the served models (each tagged with the
    checkpoint behind it)."""
    from vidrip.data.sample.build import DATASET_FILES
    from vidrip.eval.config import EvalConfig

    ev = load_config(EvalConfig, step.config, step.overrides)
    models = [
        m.model_copy(update={"revision": revisions.get(m.model, m.revision)})
        for m in ev.models
        if m.base_url is not None or m.model in served
    ]
    if not models:
        raise ValueError(f"{step.config}: none of its models is served by the pipeline ({', '.join(served)})")
    workdir = _workdir(cfg)
    return ev.model_copy(
        update={
            "test_set": str(Path(sample_dir) / DATASET_FILES["test"]),
            "media_root": sample_dir,
            "models": models,
            "out": str(workdir / "eval" / cfg.name),
            "cache_dir": str(workdir / "eval" / "cache"),
            "workdir": str(workdir),
            "tracking": cfg.tracking,
            "ray": cfg.ray,
            "serve": None,
        }
    )


def run_eval(ev_cfg, endpoint, lineage) -> dict:
    from vidrip.eval.run import evaluate

    result = evaluate(ev_cfg, endpoint, lineage)
    return {
        "table_md": str(result.paths["table_md"]),
        "run_id": result.run_id,
        "calls": result.stats,
        "seconds": result.seconds,
        "paths": [str(result.paths["table_md"])],
    }
