"""Chain training stages: each starts from the previous stage's checkpoint, found through MLflow.

Run as::

    vidrip train --config jobs/configs/train_tiny.yaml [stages=[0,1] stage_overrides.1.lr=2e-5]
    python jobs/train.py --config jobs/configs/train_tiny.yaml

One parent MLflow run per training run, one nested run per stage. A stage's ``init_from`` names a
stage, never a path: the checkpoint is the ``vidrip.checkpoint`` tag of that stage's FINISHED run in this
training run. A first stage whose predecessor is not part of the run (``stages=[3]``) starts from what
``init_from`` names, a run id, ``models:/name@alias`` (or ``/version``) or a folder; without it the run
is refused with the candidates listed, never guessed from "the newest run in the store".
Each stage run records every config value as a param, the per-step loss, learning rate, grad norm,
samples/s and tokens/s from the Trainer's log history, and tags: stage, checkpoint, init run, dataset
fingerprint. The last stage's model becomes a new version of the registered model ``vidrip-video``.

Resume: every training run has a name (``run_name``; a new ``train-<time>`` when unset, printed at the
start). Rerunning with the same name reopens its parent run, keeps the stages that FINISHED, and
continues an interrupted stage from its last Ray Train checkpoint; a stage whose configuration changed
since is refused (start a new run name instead).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from vidrip.config import ConfigPath, StrictConfig, config_file
from vidrip.model.loading import ModelConfig
from vidrip.runtime import RayConfig
from vidrip.tracking import CHECKPOINT_TAG, RUN_ID, Lineage, ResolvedInput, TrackingConfig, config_sha
from vidrip.train.loop import StageRunConfig, fit_stage, read_events
from vidrip.train.memory import GIB, MemoryPlan, default_capacity_gib, memory_plan
from vidrip.train.stages import StageSpec, default_stages

__all__ = [
    "CHECKPOINT_TAG",
    "STAGE_TAG",
    "StageOutcome",
    "TrainConfig",
    "check_plans",
    "new_run_name",
    "plan_stages",
    "resolve_start",
    "run_stages",
]

log = logging.getLogger(__name__)
STAGE_TAG = "vidrip.stage"
TRAIN_RUN_TAG = "vidrip.train_run"  # on the parent run: the training run's name
CONFIG_SHA_TAG = "vidrip.config_sha"
INIT_TAG = "vidrip.init_from_run"  # on a stage run: the run its checkpoint came from, "base", or the folder
LOGGED_METRICS = ("loss", "learning_rate", "grad_norm", "samples_per_second", "tokens_per_second")


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
    gradient_checkpointing: bool = False
    device_memory_gib: float | None = Field(
        default=None,
        gt=0,
        description="memory each worker has, for the memory plan; None: 80 GiB per GPU, or on CPU this "
        "machine's memory shared by the workers",
    )
    max_failures: int = Field(
        default=2, ge=0, description="worker failures a stage survives (resumes from its checkpoint)"
    )
    deepspeed: dict[Literal["full", "lora"], ConfigPath | None] = Field(
        default_factory=lambda: {"full": "zero2", "lora": "zero3"},
        description="DeepSpeed config JSON for stages without and with LoRA: a path, or zero2 / zero3 (the ZeRO-2 "
        "and ZeRO-3 configs vidrip ships); None: plain DDP",
    )
    run_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="None: a new run 'train-<time>'; an earlier run's name resumes it",
    )
    init_from: str | None = Field(
        default=None,
        description="what the first stage starts from when the stage it starts from is not in this run "
        "(e.g. stages=[3]): an MLflow run id, models:/name@alias or models:/name/version, or a folder",
    )
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
    trained: bool = False  # False: kept from an earlier invocation of the same training run


def _log_history(hf_checkpoint: Path) -> list[dict]:
    state = hf_checkpoint / "trainer_state.json"
    return json.loads(state.read_text())["log_history"] if state.is_file() else []


def _outcome_of(run, stage: int, lineage: Lineage) -> StageOutcome:
    """A FINISHED stage run, read back from MLflow (a resumed training run keeps it)."""
    losses = lineage.client.get_metric_history(run.info.run_id, "loss")
    init = run.data.tags.get(INIT_TAG, "base")
    return StageOutcome(
        stage=stage,
        run_id=run.info.run_id,
        checkpoint=run.data.tags[CHECKPOINT_TAG],
        init_run_id=init if RUN_ID.match(init) else None,
        global_step=int(run.data.metrics.get("global_step", 0)),
        final_loss=max(losses, key=lambda m: m.step).value if losses else float("nan"),
        seconds=run.data.metrics.get("seconds", 0.0),
    )


def plan_stages(cfg: TrainConfig) -> list[MemoryPlan]:
    """The memory plan of each configured stage, per worker (see :mod:`vidrip.train.memory`)."""
    plans = []
    for index in cfg.stages:
        spec = cfg.spec(index)
        ds_path = cfg.deepspeed["lora" if spec.uses_lora else "full"]
        capacity = cfg.device_memory_gib or default_capacity_gib(cfg.use_gpu, cfg.num_workers)
        plans.append(
            memory_plan(
                cfg.model,
                spec,
                workers=cfg.num_workers,
                use_gpu=cfg.use_gpu,
                deepspeed_config=json.loads(config_file(ds_path).read_text()) if ds_path else None,
                capacity_gib=capacity,
                per_device_batch_size=cfg.per_device_batch_size,
                gradient_checkpointing=cfg.gradient_checkpointing,
            )
        )
    return plans


def check_plans(plans: list[MemoryPlan]) -> None:
    """Refuse plans that do not fit, naming the stage and what would help."""
    bad = [p for p in plans if not p.fits]
    if bad:
        worst = ", ".join(
            f"stage {p.stage}: {p.total_bytes / GIB:.1f} of {p.capacity_bytes / GIB:.1f} GiB" for p in bad
        )
        raise ValueError(
            f"memory plan does not fit ({worst} per worker); try more workers, ZeRO-3, "
            "gradient_checkpointing=true, fewer frames (stage_overrides.N.frames.max_frames) or device_memory_gib "
            "(see: vidrip train --dry-run)"
        )


def new_run_name() -> str:
    return time.strftime("train-%Y%m%d-%H%M%S")


def run_stages(cfg: TrainConfig, lineage: Lineage | None = None) -> list[StageOutcome]:
    """Run ``cfg.stages`` in order on the connected Ray cluster, each from its ``init_from``.

    With ``cfg.run_name`` of an earlier run: resume it (see the module docstring). ``lineage``: the
    caller's (a pipeline step nests this run under its own), else one for ``cfg.tracking``."""

    check_plans(plan_stages(cfg))
    workdir = Path(cfg.workdir).resolve()
    lineage = lineage or Lineage(cfg.tracking, workdir)
    name = cfg.run_name or new_run_name()
    start = resolve_start(cfg, lineage, name)
    log.info("training run %s (rerun with run_name=%s to resume it)", name, name)
    outcomes: list[StageOutcome] = []
    with lineage.run("train", cfg, dataset=cfg.data_root, run_name=name, resume_by=(TRAIN_RUN_TAG, name)) as parent:
        for index in cfg.stages:
            outcome = _run_stage(cfg, index, name, parent.run_id, lineage, workdir, start)
            outcomes.append(outcome)
            if index == cfg.stages[-1] and outcome.trained:
                version = lineage.register(
                    cfg.registered_model, outcome.checkpoint, outcome.run_id, tags={STAGE_TAG: str(index)}
                )
                log.info("registered %s version %s (stage %d)", cfg.registered_model, version.version, index)
    return outcomes


def resolve_start(cfg: TrainConfig, lineage: Lineage, name: str | None = None) -> ResolvedInput | None:
    """What the first stage starts from when its predecessor is not in ``cfg.stages`` (None: it needs
    nothing): ``cfg.init_from``, else that stage as trained earlier in the same training run (``name``);
    refused, listing the candidates, if neither."""
    stage = cfg.spec(cfg.stages[0]).init_from
    if stage == "base" or stage in cfg.stages:
        return None
    if cfg.init_from is not None:
        return lineage.resolve_input(cfg.init_from, "init_from")
    for parent in lineage.find_runs("train", {TRAIN_RUN_TAG: name}, status=None) if name else []:
        done = lineage.find_runs("train", {STAGE_TAG: str(stage)}, parent=parent.info.run_id)
        done = [r for r in done if CHECKPOINT_TAG in r.data.tags]
        if done:
            return lineage.resolve_input(done[0].info.run_id, "init_from")
    raise lineage.missing_input(
        "init_from",
        "train",
        {STAGE_TAG: str(stage)},
        f"stage {cfg.stages[0]} starts from stage {stage}, which is not in stages={cfg.stages}: "
        f"an MLflow run id of stage {stage}, models:/name@alias, or a checkpoint folder",
    )


def _init_tag(init_stage, init_run_id: str | None, start) -> str:
    if init_stage == "base":
        return "base"
    return init_run_id or start.ref


def _run_stage(
    cfg: TrainConfig, index: int, name: str, parent_id: str, lineage: Lineage, workdir: Path, start
) -> StageOutcome:
    spec = cfg.spec(index)
    model = cfg.model
    init_run_id = None
    if spec.init_from != "base":
        if spec.init_from in cfg.stages:
            runs = lineage.find_runs("train", {STAGE_TAG: str(spec.init_from)}, parent=parent_id)
            runs = [r for r in runs if CHECKPOINT_TAG in r.data.tags]
            if not runs:
                raise RuntimeError(f"stage {index}: stage {spec.init_from} of training run '{name}' left no checkpoint")
            init_run_id, checkpoint = runs[0].info.run_id, runs[0].data.tags[CHECKPOINT_TAG]
        else:
            init_run_id, checkpoint = start.run_id, start.checkpoint
        model = model.model_copy(update={"checkpoint": checkpoint})
    run_cfg = StageRunConfig(
        stage=spec,
        model=model,
        data_root=cfg.data_root,
        output_dir=str(workdir / "train" / name / f"stage{index}"),
        run_name=f"{name}-stage{index}",
        num_workers=cfg.num_workers,
        use_gpu=cfg.use_gpu,
        per_device_batch_size=cfg.per_device_batch_size,
        max_steps=cfg.max_steps,
        save_steps=cfg.save_steps,
        max_failures=cfg.max_failures,
        gradient_checkpointing=cfg.gradient_checkpointing,
        deepspeed=cfg.deepspeed["lora" if spec.uses_lora else "full"],
    )
    sha = config_sha(run_cfg)
    before = lineage.find_runs("train", {STAGE_TAG: str(index)}, status=None, parent=parent_id)
    for run in before:
        if run.data.tags.get(CONFIG_SHA_TAG) != sha:
            raise ValueError(
                f"training run '{name}': stage {index} was started with a different configuration "
                f"(MLflow run {run.info.run_id}); resuming needs the same one. Start a new run_name instead."
            )
    finished = [r for r in before if r.info.status == "FINISHED" and CHECKPOINT_TAG in r.data.tags]
    if finished:
        log.info("stage %d: already finished in MLflow run %s: kept", index, finished[0].info.run_id)
        return _outcome_of(finished[0], index, lineage)

    with lineage.run(
        "train",
        run_cfg,
        dataset=cfg.data_root,
        parent_run_id=parent_id,
        run_name=f"stage{index}-{spec.name}",
        tags={STAGE_TAG: str(index), INIT_TAG: _init_tag(spec.init_from, init_run_id, start)},
    ) as run:
        started = time.perf_counter()
        result = fit_stage(run_cfg)
        seconds = time.perf_counter() - started
        hf_dir = Path(result.checkpoint) / "checkpoint"
        for entry in _log_history(hf_dir):
            metrics = {k: float(v) for k, v in entry.items() if k in LOGGED_METRICS}
            if metrics:
                run.log_metrics(metrics, step=int(entry.get("step", 0)))
        resumes = [e["step"] for e in read_events(run_cfg.output_dir) if e["event"] == "resume"]
        if resumes:
            run.set_tag("vidrip.resumed_from_steps", ",".join(map(str, resumes)))
        run.log_metrics({"seconds": seconds, "global_step": result.global_step})
        run.set_tag(CHECKPOINT_TAG, str(hf_dir))
    outcome = StageOutcome(
        stage=index,
        run_id=run.run_id,
        checkpoint=str(hf_dir),
        init_run_id=init_run_id,
        global_step=result.global_step,
        final_loss=float(result.metrics["loss"]),
        seconds=seconds,
        trained=True,
    )
    log.info("stage %d: %d steps, loss %.4f, %.0f s", index, result.global_step, outcome.final_loss, seconds)
    return outcome
