"""Chain training stages: each starts from the previous stage's checkpoint, found through MLflow.

Run as::

    vidrip train --config jobs/configs/train_tiny.yaml [stages=[0,1] stage_overrides.1.lr=2e-5]
    python jobs/train.py --config jobs/configs/train_tiny.yaml

One parent MLflow run per invocation, one nested run per stage. A stage's ``init_from`` names a stage,
never a path: the checkpoint is the ``vidrip.checkpoint`` tag of the newest FINISHED run of that stage
(under this parent run when it trained there, else anywhere in the ``vidrip-train`` experiment). Each
stage run records every config value as a param, the per-step loss, learning rate and grad norm from
the Trainer's log history, and tags: stage, checkpoint, init run, dataset fingerprint. The last stage's
model becomes a new version of the registered model ``vidrip-video``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from vidrip.config import StrictConfig
from vidrip.model.loading import ModelConfig
from vidrip.runtime import RayConfig
from vidrip.tracking import TrackingConfig, job_run, register_checkpoint
from vidrip.train.loop import StageRunConfig, fit_stage
from vidrip.train.stages import StageSpec, default_stages

__all__ = ["StageOutcome", "TrainConfig", "find_stage_run", "run_stages"]

log = logging.getLogger(__name__)
STAGE_TAG = "vidrip.stage"
CHECKPOINT_TAG = "vidrip.checkpoint"


class TrainConfig(StrictConfig):
    """Which stages to run, on what, with which workers. Stage specs are the paper's defaults plus overrides."""

    workdir: str = "work"
    data_root: str = "work/sample"
    stages: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    stage_overrides: dict[int, dict[str, Any]] = Field(default_factory=dict)
    model: ModelConfig = Field(default_factory=ModelConfig)
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    per_device_batch_size: int = Field(default=1, ge=1)
    max_steps: int = -1
    save_steps: int = Field(default=2, ge=1)
    deepspeed: dict[Literal["full", "lora"], str | None] = Field(
        default_factory=lambda: {
            "full": "jobs/configs/deepspeed/zero2.json",
            "lora": "jobs/configs/deepspeed/zero3.json",
        },
        description="DeepSpeed config for stages without and with LoRA (None: plain DDP)",
    )
    run_prefix: str = "vidrip"
    registered_model: str = Field(default="vidrip-video", description="the last stage's model is a new version")
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _stages_valid(self) -> TrainConfig:
        for i in self.stages:
            if i not in default_stages():
                raise ValueError(f"stages: no stage {i} (stages are 0-3)")
        for i in self.stage_overrides:
            self.spec(i)  # validates the merged spec now, naming unknown keys
        return self

    def spec(self, index: int) -> StageSpec:
        base = default_stages()[index].model_dump()
        override = self.stage_overrides.get(index, {})
        for key in ("lora", "frames"):  # sections merge key by key, like the override syntax suggests
            if isinstance(override.get(key), dict) and isinstance(base.get(key), dict):
                override = {**override, key: {**base[key], **override[key]}}
        try:
            return StageSpec.model_validate({**base, **override})
        except ValidationError as exc:
            problems = "; ".join(
                f"'{'.'.join(map(str, e['loc']))}': {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors()
            )
            raise ValueError(f"stage_overrides.{index}: {problems}") from None


class StageOutcome(StrictConfig):
    stage: int
    run_id: str
    checkpoint: str  # the Hugging Face model folder
    init_run_id: str | None
    global_step: int
    final_loss: float
    seconds: float


def find_stage_run(stage: int, parent_run_id: str | None = None, experiment: str = "vidrip-train"):
    """The newest FINISHED run of ``stage`` that has a checkpoint (under ``parent_run_id`` if it has one)."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    base = f"tags.`{STAGE_TAG}` = '{stage}' and attributes.status = 'FINISHED'"
    for query in ([f"{base} and tags.`mlflow.parentRunId` = '{parent_run_id}'"] if parent_run_id else []) + [base]:
        runs = mlflow.search_runs(
            [exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], output_format="list"
        )
        runs = [r for r in runs if CHECKPOINT_TAG in r.data.tags]
        if runs:
            return runs[0]
    return None


def _log_history(hf_checkpoint: Path) -> list[dict]:
    state = hf_checkpoint / "trainer_state.json"
    return json.loads(state.read_text())["log_history"] if state.is_file() else []


def run_stages(cfg: TrainConfig) -> list[StageOutcome]:
    """Run ``cfg.stages`` in order on the connected Ray cluster, each from its ``init_from``."""
    import mlflow

    workdir = Path(cfg.workdir).resolve()
    outcomes: list[StageOutcome] = []
    with job_run("train", cfg, tracking=cfg.tracking, workdir=workdir, dataset=cfg.data_root) as parent:
        for index in cfg.stages:
            spec = cfg.spec(index)
            model = cfg.model
            init_run_id = None
            if spec.init_from != "base":
                init = find_stage_run(spec.init_from, parent.info.run_id, f"{cfg.tracking.experiment_prefix}-train")
                if init is None:
                    raise RuntimeError(
                        f"stage {index} starts from stage {spec.init_from}, but MLflow has no FINISHED run of "
                        f"stage {spec.init_from} with a checkpoint; run it first (stages=[{spec.init_from},{index}])"
                    )
                init_run_id = init.info.run_id
                model = model.model_copy(update={"checkpoint": init.data.tags[CHECKPOINT_TAG]})
            run_cfg = StageRunConfig(
                stage=spec,
                model=model,
                data_root=cfg.data_root,
                output_dir=str(workdir / "train" / f"stage{index}"),
                run_name=f"{cfg.run_prefix}-stage{index}-{parent.info.run_id[:8]}",
                num_workers=cfg.num_workers,
                use_gpu=cfg.use_gpu,
                per_device_batch_size=cfg.per_device_batch_size,
                max_steps=cfg.max_steps,
                save_steps=cfg.save_steps,
                deepspeed=cfg.deepspeed["lora" if spec.uses_lora else "full"],
            )
            with job_run(
                "train",
                run_cfg,
                tracking=cfg.tracking,
                workdir=workdir,
                dataset=cfg.data_root,
                parent_run_id=parent.info.run_id,
                run_name=f"stage{index}-{spec.name}",
            ) as run:
                mlflow.set_tags({STAGE_TAG: str(index), "vidrip.init_from_run": init_run_id or "base"})
                start = time.perf_counter()
                result = fit_stage(run_cfg)
                seconds = time.perf_counter() - start
                hf_dir = Path(result.checkpoint) / "checkpoint"
                for entry in _log_history(hf_dir):
                    step = int(entry.get("step", 0))
                    mlflow.log_metrics(
                        {k: float(v) for k, v in entry.items() if k in ("loss", "learning_rate", "grad_norm")},
                        step=step,
                    )
                mlflow.log_metrics({"seconds": seconds, "global_step": result.global_step})
                mlflow.set_tag(CHECKPOINT_TAG, str(hf_dir))
            outcomes.append(
                StageOutcome(
                    stage=index,
                    run_id=run.info.run_id,
                    checkpoint=str(hf_dir),
                    init_run_id=init_run_id,
                    global_step=result.global_step,
                    final_loss=float(result.metrics["loss"]),
                    seconds=seconds,
                )
            )
            log.info(
                "stage %d: %d steps, loss %.4f, %.0f s", index, result.global_step, outcomes[-1].final_loss, seconds
            )
            if index == cfg.stages[-1]:
                version = register_checkpoint(
                    cfg.registered_model, hf_dir, run.info.run_id, tags={STAGE_TAG: str(index)}
                )
                log.info("registered %s version %s (stage %d)", cfg.registered_model, version.version, index)
    return outcomes
