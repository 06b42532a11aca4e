"""A LoRA sweep on Ray Tune: stage 3 trained once per trial (a real Ray Train run), the best adapter promoted.

Run as::

    vidrip tune --config tune_configs/lora_sweep_tiny.yaml [name=my-sweep asha.grace_period=2]
    python jobs/tune.py --config tune_configs/lora_sweep_tiny.yaml
    ray job submit --working-dir . -- python jobs/tune.py --config tune_configs/lora_sweep_7b.yaml ray.address=auto

Each trial is a Tune function that builds and fits a ``TorchTrainer`` for stage 3 with the trial's
values (the Ray Train V2 pattern), holding out ``eval_fraction`` of the stage's data; every
``eval_every`` steps the trial evaluates, saves, and Ray Train's ``TuneReportCallback`` hands
``eval_loss`` to Tune, where ASHA stops the trials that fall behind. Trials run side by side as far as
the cluster allows: ``max_concurrent_trials`` is the number of trial-sized slices (the trial's workers,
plus a sliver of CPU for the trial driver) that fit in the cluster's CPUs and GPUs, at least one.

Stage 3 starts from what ``init_from`` names: a stage-2 run id, ``models:/name@alias`` (or ``/version``)
or a folder (``model.checkpoint`` works too); without either the sweep is refused, listing the stage-2 runs
it could start from, never guessing "the newest run in the store".
A failing trial is recorded as failed and the sweep goes on. A sweep has a name (``name``; a new
``sweep-<time>`` when unset): rerunning with the same name restores the Tune experiment and finishes
what was unfinished (each unfinished trial resumes from its own last checkpoint).

In MLflow: a parent run for the sweep, a nested run per trial (params, eval and training loss history,
steps run, stopped early or not, its checkpoint), the results table (CSV) and a plot (PNG: validation
loss against each searched field) as artifacts; the best trial's adapter becomes a version of
``registered_model`` with the alias ``champion``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from vidrip.config import ConfigPath, StrictConfig, config_file
from vidrip.model.loading import ModelConfig
from vidrip.runtime import RayConfig
from vidrip.sweep.space import Dimension, apply_params, tune_space
from vidrip.tracking import Lineage, ResolvedInput, TrackedRun, TrackingConfig
from vidrip.train.loop import StageRunConfig
from vidrip.train.stages import StageSpec, default_stage

__all__ = [
    "AshaConfig",
    "SweepConfig",
    "SweepResult",
    "TrialRow",
    "init_checkpoint",
    "max_concurrent_trials",
    "new_sweep_name",
    "run_sweep",
]

log = logging.getLogger(__name__)
TRIAL_DRIVER_CPUS = 0.05  # the trial function only waits on its TorchTrainer (whose controller takes no CPU)
SWEEP_TAG = "vidrip.sweep"
TRIAL_TAG = "vidrip.trial_id"
METRIC = "eval_loss"


class AshaConfig(StrictConfig):
    """ASHA early stopping on validation loss; one time unit is one evaluation (``eval_every`` steps)."""

    grace_period: int = Field(default=1, ge=1, description="evaluations every trial gets before it can be stopped")
    reduction_factor: float = Field(default=2.0, gt=1)


class SweepConfig(StrictConfig):
    """What to search, on what, with how much of the cluster (see the module docstring)."""

    workdir: str = "work"
    data_root: str = "work/sample"
    name: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="None: 'sweep-<time>'; reuse to resume"
    )
    init_from: str | None = Field(
        default=None,
        description="stage 3 starts from: a stage-2 MLflow run id, models:/name@alias or /version, or a folder; "
        "None: model.checkpoint",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    stage_overrides: dict[str, Any] = Field(default_factory=dict, description="onto the paper's stage 3, all trials")
    space: dict[str, Dimension] = Field(min_length=1)
    search: Literal["grid", "optuna"] = "grid"
    num_samples: int = Field(default=1, ge=1, description="samples of the space (grid: repeats of the grid)")
    seed: int = 0
    max_steps: int = Field(default=6, ge=1)
    eval_every: int = Field(default=2, ge=1, description="steps between evaluations, checkpoints and reports")
    eval_fraction: float = Field(default=0.25, gt=0, lt=1)
    asha: AshaConfig | None = Field(default_factory=AshaConfig, description="None: no early stopping")
    num_workers: int = Field(default=1, ge=1, description="Ray Train workers per trial")
    cpus_per_worker: float = Field(default=0.95, gt=0)
    use_gpu: bool = False
    per_device_batch_size: int = Field(default=1, ge=1)
    deepspeed: ConfigPath | None = Field(
        default="zero3", description="DeepSpeed config JSON: a path, or zero2 / zero3 (packaged); None: plain DDP"
    )
    max_concurrent_trials: int | None = Field(default=None, ge=1, description="None: as many as the cluster fits")
    registered_model: str = "vidrip-video"
    alias: str = "champion"
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _space_fits_stage3(self) -> SweepConfig:
        base = self.stage().model_dump()
        for key, dim in self.space.items():
            first = dim.grid or dim.choice or [dim.loguniform[0] if dim.loguniform else dim.uniform[0]]
            try:
                StageSpec.model_validate(apply_params(base, {key: first[0]}))
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None
        return self

    def stage(self) -> StageSpec:
        """Stage 3 as every trial starts: the paper's defaults with ``stage_overrides``."""
        base = default_stage(3).model_dump()
        try:
            merged = apply_params(base, _dotted(self.stage_overrides))
        except KeyError as exc:
            raise ValueError(exc.args[0].replace("space.", "stage_overrides.")) from None
        return StageSpec.model_validate(merged)


def _dotted(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class TrialRow(StrictConfig):
    trial: str
    params: dict[str, Any]
    status: Literal["finished", "stopped early", "failed"]
    best_eval_loss: float | None
    steps: int
    checkpoint: str | None  # the trial's best kept checkpoint (Hugging Face folder)
    history: list[dict[str, float]]
    error: str | None = None


class SweepResult(StrictConfig):
    name: str
    rows: list[TrialRow]
    best: TrialRow | None
    run_id: str
    registered_version: str | None
    table: str  # the results as aligned text, best first
    table_path: str
    plot_path: str
    seconds: float


def new_sweep_name() -> str:
    return time.strftime("sweep-%Y%m%d-%H%M%S")


def max_concurrent_trials(cfg: SweepConfig, resources: dict[str, float]) -> int:
    """How many trials fit in ``resources`` (``ray.cluster_resources()``) at once, at least one."""
    per_trial_cpu = TRIAL_DRIVER_CPUS + cfg.num_workers * cfg.cpus_per_worker
    fits = math.floor(resources.get("CPU", 0) / per_trial_cpu + 1e-9)
    if cfg.use_gpu:
        fits = min(fits, math.floor(resources.get("GPU", 0) / cfg.num_workers))
    return max(1, fits)


def _trial(config: dict) -> None:
    """One trial, on a Tune worker: stage 3 with this trial's values, reporting to Tune through Ray Train."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from vidrip.train.loop import fit_stage

    base = StageRunConfig.model_validate(config["run"])
    spec = StageSpec.model_validate(apply_params(base.stage.model_dump(), config["params"]))
    trial_id = ray.tune.get_context().get_trial_id()
    run = base.model_copy(
        update={
            "stage": spec,
            "run_name": f"{base.run_name}-{trial_id}",
            "output_dir": str(Path(base.output_dir) / trial_id),
        }
    )
    fit_stage(run, callbacks=[TuneReportCallback()])


def init_checkpoint(cfg: SweepConfig, lineage: Lineage) -> ResolvedInput:
    """Stage 3's starting checkpoint, and the MLflow run it came from when known (see the module docstring)."""
    from vidrip.train.chain import STAGE_TAG

    ref = cfg.init_from or cfg.model.checkpoint
    if ref is None:
        raise lineage.missing_input(
            "init_from", "train", {STAGE_TAG: "2"}, "a stage-2 MLflow run id, models:/name@alias, or a folder"
        )
    return lineage.resolve_input(ref, "init_from" if cfg.init_from else "model.checkpoint")


def _base_run(cfg: SweepConfig, name: str, checkpoint: str) -> StageRunConfig:
    return StageRunConfig(
        stage=cfg.stage(),
        model=cfg.model.model_copy(update={"checkpoint": checkpoint}),
        data_root=str(Path(cfg.data_root).resolve()),
        output_dir=str(Path(cfg.workdir).resolve() / "tune" / name / "trials"),
        run_name=name,
        num_workers=cfg.num_workers,
        use_gpu=cfg.use_gpu,
        cpus_per_worker=cfg.cpus_per_worker,
        per_device_batch_size=cfg.per_device_batch_size,
        max_steps=cfg.max_steps,
        save_steps=cfg.eval_every,
        deepspeed=str(config_file(cfg.deepspeed).resolve()) if cfg.deepspeed else None,
        eval_fraction=cfg.eval_fraction,
        keep_best_by=METRIC,
        max_failures=0,
        seed=cfg.seed,
    )


def _tuner(cfg: SweepConfig, name: str, base: StageRunConfig, concurrency: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainable = tune.with_resources(_trial, {"CPU": TRIAL_DRIVER_CPUS})
    path = Path(cfg.workdir).resolve() / "tune" / name / "tune"
    if tune.Tuner.can_restore(str(path / name)):
        log.info("sweep %s: restoring the Tune experiment in %s", name, path / name)
        return tune.Tuner.restore(str(path / name), trainable=trainable, resume_unfinished=True, resume_errored=False)
    search_alg = None
    if cfg.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=cfg.seed)
    scheduler = None
    if cfg.asha is not None:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=max(1, cfg.max_steps // cfg.eval_every),
            grace_period=cfg.asha.grace_period,
            reduction_factor=cfg.asha.reduction_factor,
        )
    return tune.Tuner(
        trainable,
        param_space={"run": base.model_dump(mode="json"), "params": tune_space(cfg.space, cfg.search)},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="min",
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=cfg.num_samples,
            max_concurrent_trials=concurrency,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=str(path), failure_config=tune.FailureConfig(max_failures=0), verbose=1
        ),
    )


def _row(result, cfg: SweepConfig) -> TrialRow:
    frame = result.metrics_dataframe
    history: list[dict[str, float]] = []
    best_loss, checkpoint, steps = None, None, 0
    if frame is not None and len(frame):
        for _, rec in frame.iterrows():
            entry = {k: float(rec[k]) for k in ("step", METRIC, "loss") if k in rec and rec[k] == rec[k]}
            history.append(entry)
            steps = max(steps, int(entry.get("step", 0)))
            has_checkpoint = isinstance(rec.get("checkpoint_path"), str)
            if METRIC in entry and has_checkpoint and (best_loss is None or entry[METRIC] < best_loss):
                best_loss, checkpoint = entry[METRIC], str(Path(rec["checkpoint_path"]) / "checkpoint")
    if result.error is not None:
        status = "failed"
    elif steps < cfg.max_steps:
        status = "stopped early"
    else:
        status = "finished"
    config = result.config  # a restored experiment's errored trials have only their params.json
    if config is None:
        config = json.loads((Path(result.path) / "params.json").read_text())
    match = re.search(r"_([0-9a-f]{5}_\d{5})_", Path(result.path).name)  # Tune's trial id, stable across restores
    return TrialRow(
        trial=match.group(1) if match else Path(result.path).name,
        params=dict(config.get("params", {})),
        status=status,
        best_eval_loss=best_loss,
        steps=steps,
        checkpoint=checkpoint,
        history=history,
        error=None if result.error is None else str(result.error).strip()[-600:],  # the end names the cause
    )


def run_sweep(cfg: SweepConfig, lineage: Lineage | None = None) -> SweepResult:
    """Run (or resume) the sweep on the connected Ray cluster; track it; promote the best adapter.
    ``lineage``: the caller's (a pipeline step nests the sweep under its own), else one for ``cfg.tracking``."""
    import ray

    from vidrip.sweep.report import plot_sweep, results_table

    start = time.perf_counter()
    workdir = Path(cfg.workdir).resolve()
    lineage = lineage or Lineage(cfg.tracking, workdir)
    name = cfg.name or new_sweep_name()
    init = init_checkpoint(cfg, lineage)
    base = _base_run(cfg, name, init.checkpoint)
    concurrency = cfg.max_concurrent_trials or max_concurrent_trials(cfg, ray.cluster_resources())
    free, needed = ray.available_resources().get("CPU", 0.0), TRIAL_DRIVER_CPUS + cfg.num_workers * cfg.cpus_per_worker
    if free < needed:
        log.warning(
            "sweep %s: %.2f CPUs are free and a trial needs %.2f: trials wait until others (Serve replicas, "
            "other jobs) free them",
            name,
            free,
            needed,
        )
    out_dir = workdir / "tune" / name
    with lineage.run("tune", cfg, dataset=cfg.data_root, run_name=name, resume_by=(SWEEP_TAG, name)) as parent:
        parent.set_tags(
            {
                "vidrip.init_from_run": init.run_id or init.ref,
                "vidrip.init_checkpoint": init.checkpoint,
                "vidrip.concurrent_trials": str(concurrency),
            }
        )
        log.info("sweep %s: up to %d trial(s) at once; results in %s", name, concurrency, out_dir)
        grid = _tuner(cfg, name, base, concurrency).fit()
        rows = sorted((_row(r, cfg) for r in grid), key=lambda r: r.trial)
        trial_runs = lineage.find_runs("tune", status=None, parent=parent.run_id)
        logged = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in trial_runs if TRIAL_TAG in r.data.tags}
        run_ids = {row.trial: logged.get(row.trial) or _log_trial(row, parent, lineage) for row in rows}
        keys = list(cfg.space)
        table_path = out_dir / "results.csv"
        table = results_table(rows, keys, table_path)
        plot_path = plot_sweep(rows, keys, out_dir / "sweep.png")
        parent.log_artifact(table_path)
        parent.log_artifact(plot_path)
        done = [r for r in rows if r.best_eval_loss is not None and r.checkpoint is not None]
        best = min(done, key=lambda r: r.best_eval_loss) if done else None
        version = None
        if best is not None:
            parent.log_metric("best_eval_loss", best.best_eval_loss)
            parent.set_tags({"vidrip.best_trial": best.trial, "vidrip.best_checkpoint": best.checkpoint})
            client = lineage.client
            query = f"name = '{cfg.registered_model}' and run_id = '{run_ids[best.trial]}'"
            known = [v for v in client.search_model_versions(query) if v.source == best.checkpoint]  # a rerun
            registered = (
                known[0]
                if known
                else lineage.register(
                    cfg.registered_model,
                    best.checkpoint,
                    run_ids[best.trial],
                    tags={SWEEP_TAG: name, TRIAL_TAG: best.trial},
                )
            )
            client.set_registered_model_alias(cfg.registered_model, cfg.alias, registered.version)
            version = str(registered.version)
        log.info("sweep %s:\n%s", name, table)
    return SweepResult(
        name=name,
        rows=rows,
        best=best,
        run_id=parent.run_id,
        registered_version=version,
        table=table,
        table_path=str(table_path),
        plot_path=str(plot_path),
        seconds=time.perf_counter() - start,
    )


def _log_trial(row: TrialRow, parent: TrackedRun, lineage: Lineage) -> str:
    """The trial as an MLflow run nested under the sweep, ended FINISHED or FAILED (never left RUNNING)."""
    from vidrip.tracking import CHECKPOINT_TAG, flatten

    created = lineage.client.create_run(
        parent.experiment_id,
        run_name=row.trial,
        tags={TRIAL_TAG: row.trial, "vidrip.trial_status": row.status, "mlflow.parentRunId": parent.run_id},
    )
    run = TrackedRun(lineage.client, created.info.run_id, parent.experiment_id)
    try:
        run.log_params(flatten(row.params))
        for entry in row.history:
            step = int(entry.get("step", 0))
            run.log_metrics({k: v for k, v in entry.items() if k != "step"}, step=step)
        run.log_metric("steps", row.steps)
        if row.best_eval_loss is not None:
            run.log_metric("best_eval_loss", row.best_eval_loss)
        if row.checkpoint:
            run.set_tag(CHECKPOINT_TAG, row.checkpoint)
        if row.error:
            run.set_tag("vidrip.error", row.error)
    finally:
        lineage.client.set_terminated(run.run_id, "FAILED" if row.status == "failed" else "FINISHED")
    return run.run_id
