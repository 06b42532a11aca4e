"""The pipeline job: raw teaching videos to an evaluated, served model, as one Ray job tracked in MLflow.

Run as::

    python jobs/pipeline.py --config jobs/configs/pipeline_tiny.yaml            # starts a head on loopback
    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/pipeline_tiny.yaml \\
        ray.address=auto workdir=/mnt/shared/work                                  # on a running cluster
    vidrip pipeline --config jobs/configs/pipeline_tiny.yaml

It reads top to bottom like the paper's method section:

1. ``sample``: the embedded corpus (raw teaching videos with ground truth, stage data, test set);
2. ``detector``: the tissue/person detector ("YOLO-Path") fine-tuned on the raw videos' frames;
3. ``curate``: Ray Data curation of the raw videos into clips and instruction JSON, the instructions asked
   of an LLM endpoint (``instruct_llm``: a Serve app deployed for the step; JSON rounds enforced by
   ``response_format``);
4. ``train``: stages 0-3 on Ray Train + DeepSpeed, each from the previous one; the curated clips join
   stage 2's mixture and the curated videos stage 3's;
5. ``sweep``: LoRA rank x learning rate of stage 3 on Ray Tune from this run's stage 2, the best promoted;
6. ``merge``: the chosen adapter folded into a standalone checkpoint (registered as ``vidrip-video-merged``);
7. ``serve``: the Serve app (stage 2 as the base model, the adapter as ``vidrip-video``), left running;
8. ``eval``: the paper's judge metrics of the served models, in the paper's table.

MLflow: a parent run in the ``vidrip-pipeline`` experiment; each step its own run under it (tags
``vidrip.step``, ``vidrip.step_key``, its outputs as ``vidrip.step_outputs``); each step's job (curation,
training, ...) nests its own runs under the step's, through the one :class:`vidrip.tracking.Lineage` of
the job. A step's key hashes its resolved job config (the YAML's content after overrides, not its path)
with the keys and data fingerprint of what it consumes, so a change anywhere upstream re-runs everything
downstream of it. The key is the only name: it decides the skip and names the step's run
(``<step>-<key>``), the training run (``<name>-train-<key>``) and the sweep (``<name>-sweep-<key>``), so a
changed config is a new run beside the old one, which stays browsable.

Rerun: a step whose key has a FINISHED run with outputs still on disk is skipped (its outputs reused);
a rerun with the same ``name`` reopens the parent run. A step that stopped resumes inside: curation keeps
finished videos, training reopens its stages, the sweep its trials (same key, same names).
Each step names its inputs: the sweep starts from this run's stage-2 run (by its id), never from "the
newest" one in the store. On a shared cluster the pipeline deletes only the Serve applications it
deployed (the curation step's instruction LLM at once; the endpoint when ``keep_serving`` is false).
``sample`` always runs (it rebuilds nothing that is there; its fingerprint is what the data keys hash) and
``serve`` always deploys. The driver itself runs the detector's fine-tune and the merge (on a cluster,
submit with ``--entrypoint-num-gpus 1`` to give them a GPU). The summary (every step's status, seconds,
run and outputs) is ``<workdir>/pipeline/<name>/summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.pipeline import steps
from vidrip.pipeline.config import PipelineConfig

__all__ = ["PipelineResult", "StepRecord", "keyed_config", "run_pipeline", "step_key"]

log = logging.getLogger(__name__)
PIPELINE_TAG = "vidrip.pipeline"
STEP_TAG = "vidrip.step"
KEY_TAG = "vidrip.step_key"
OUTPUTS_TAG = "vidrip.step_outputs"
REUSED_TAG = "vidrip.reused_run"
EXPERIMENT_JOB = "pipeline"


class StepInputs(StrictConfig):
    """What a step run records as its params: the step, its key and what went into the key."""

    step: str
    key: str
    inputs: dict[str, Any] = Field(default_factory=dict)


@dataclass
class StepRecord:
    step: str
    status: str  # "ran" or "skipped"
    seconds: float
    run_id: str
    key: str
    outputs: dict


@dataclass
class PipelineResult:
    name: str
    run_id: str
    steps: list[StepRecord]
    summary_path: str
    endpoint: dict | None = None
    table: str | None = None
    seconds: float = 0.0


def step_key(step: str, inputs: dict) -> str:
    """A short hash of a step and what goes into it (configs, upstream keys, data fingerprints)."""
    text = json.dumps({"step": step, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _inputs_of(config, drop: tuple[str, ...] = ()) -> dict:
    """A job config as a step's key sees it: without what changes no result (the cluster it runs on, the
    endpoint and key an LLM is reached by, the run name the key itself gives: ``drop``)."""
    out = config.model_dump(mode="json")
    for field in ("ray", *drop):
        out.pop(field, None)
    for section in out.values():
        if isinstance(section, dict):
            for k in ("base_url", "api_key"):
                section.pop(k, None)
    return out


class _Steps:
    """Runs steps under the parent run: skip when done, else a step run around the step's job."""

    def __init__(self, parent, lineage):
        self.parent = parent
        self.lineage = lineage
        self.records: list[StepRecord] = []

    def _done(self, step: str, key: str):
        for run in self.lineage.find_runs(EXPERIMENT_JOB, {STEP_TAG: step, KEY_TAG: key}):
            outputs = json.loads(run.data.tags.get(OUTPUTS_TAG, "null") or "null")
            if isinstance(outputs, dict) and all(Path(p).exists() for p in outputs.get("paths", [])):
                return run, outputs
        return None, None

    def run(self, step: str, inputs: dict, fn: Callable[[Any, Any], dict], always: bool = False) -> dict:
        """``fn(step_run, step_lineage)``'s outputs, or those of an earlier FINISHED run with the same key.
        ``step_lineage`` nests the job's own runs under the step's."""
        key = step_key(step, inputs)
        earlier, outputs = (None, None) if always else self._done(step, key)
        started = time.perf_counter()
        if earlier is not None:
            run_id = earlier.info.run_id
            if earlier.data.tags.get("mlflow.parentRunId") != self.parent.run_id:
                with self._step_run(step, key, inputs) as run:  # lineage under this parent, pointing at the work
                    run.set_tags({REUSED_TAG: earlier.info.run_id, OUTPUTS_TAG: json.dumps(outputs)})
                    run_id = run.run_id
            log.info("pipeline step %s: done earlier (MLflow run %s, key %s): skipped", step, earlier.info.run_id, key)
            record = StepRecord(step, "skipped", time.perf_counter() - started, run_id, key, outputs)
        else:
            log.info("pipeline step %s: running (key %s)", step, key)
            with self._step_run(step, key, inputs) as run:
                outputs = fn(run, self.lineage.child(run.run_id))
                run.set_tag(OUTPUTS_TAG, json.dumps(outputs, default=str))  # paths and ids: far below 8000
                run.log_dict(outputs, "outputs.json")
                run.log_metric("seconds", time.perf_counter() - started)
            record = StepRecord(step, "ran", time.perf_counter() - started, run.run_id, key, outputs)
            log.info("pipeline step %s: done in %.0f s", step, record.seconds)
        self.records.append(record)
        return outputs

    def _step_run(self, step: str, key: str, inputs: dict):
        return self.lineage.run(
            EXPERIMENT_JOB,
            StepInputs(step=step, key=key, inputs=inputs),
            parent_run_id=self.parent.run_id,
            run_name=f"{step}-{key[:8]}",
            tags={STEP_TAG: step, KEY_TAG: key},  # the pipeline's name tags the parent alone
        )


def keyed_config(step: str, build: Callable[[str], Any], data: dict, name_field: str, run_name: str):
    """A job config whose run name is its own step key: ``build(name)`` makes the config; the key hashes it
    without the name (and with ``data``, what it consumes). Returns (config, the step's inputs)."""
    draft = build("key")
    inputs = {"config": _inputs_of(draft, drop=(name_field,)), **data}
    key = step_key(step, inputs)
    return draft.model_copy(update={name_field: f"{run_name}-{step}-{key[:8]}"}), inputs


def validate(cfg: PipelineConfig) -> None:
    """Load every step's config now, so that a wrong key fails before the first minute of work."""
    placeholder = str(Path(cfg.workdir).resolve() / "<from an earlier step>")
    if cfg.detector is not None:
        steps.detector_config(cfg, placeholder)
    steps.instruct_spec(cfg)
    steps.curate_config(cfg, placeholder, None)
    steps.train_config(cfg, placeholder, None, "validate")
    if cfg.sweep is not None:
        steps.sweep_config(cfg, placeholder, placeholder, None, "validate")
    steps.serve_spec(cfg, placeholder, None, None)
    if cfg.eval is not None:
        steps.eval_config(cfg, cfg.eval, placeholder, ["vidrip-base", "vidrip-video"], {})


def run_pipeline(cfg: PipelineConfig) -> PipelineResult:
    """Run the pipeline on the Ray cluster this process is connected to (see the module docstring)."""
    from vidrip.tracking import Lineage

    validate(cfg)
    workdir = Path(cfg.workdir).resolve()
    out = workdir / "pipeline" / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    lineage = Lineage(cfg.tracking, workdir)
    with lineage.run(
        EXPERIMENT_JOB, cfg, run_name=cfg.name, resume_by=(PIPELINE_TAG, cfg.name), tags={STEP_TAG: "pipeline"}
    ) as parent:
        s = _Steps(parent, lineage)
        sample = s.run(
            "sample",
            {"config": cfg.sample and cfg.sample.model_dump(), "sample_dir": cfg.sample_dir},
            lambda _run, step: steps.run_sample(cfg, step),
            always=True,
        )
        data = {"sample_fingerprint": sample["fingerprint"]}

        weights = None
        if cfg.detector is not None:
            det_cfg = steps.detector_config(cfg, sample["dir"])
            det = s.run(
                "detector",
                {"config": _inputs_of(det_cfg), **data},
                lambda _run, step: steps.run_detector(det_cfg, step),
            )
            weights = det["weights"]
            data["detector_key"] = s.records[-1].key

        cur_cfg = steps.curate_config(cfg, sample["dir"], weights)
        spec = steps.instruct_spec(cfg)
        cur_inputs = {
            "config": _inputs_of(cur_cfg),
            "instruct_llm": None if spec is None else spec.config.model_dump(mode="json"),
            **data,
        }
        curated = s.run("curate", cur_inputs, lambda _run, step: steps.run_curate(cur_cfg, spec, workdir, step))
        data["curate_key"] = s.records[-1].key

        train_cfg, train_inputs = keyed_config(
            "train", lambda n: steps.train_config(cfg, sample["dir"], curated["out"], n), data, "run_name", cfg.name
        )
        trained = s.run("train", train_inputs, lambda _run, step: steps.run_train(train_cfg, step))
        data["train_key"] = s.records[-1].key
        stages = trained["stages"]
        full = sorted(k for k in stages if k != "3")  # stages trained in full: the last is the served base
        base = stages[full[-1]]["checkpoint"] if full else None
        adapter = stages["3"]["checkpoint"] if "3" in stages else None

        if cfg.sweep is not None:
            if "2" not in stages:
                raise ValueError("sweep: needs stage 2 in train's stages (the sweep starts from it)")
            sweep_cfg, sweep_inputs = keyed_config(
                "sweep",
                lambda n: steps.sweep_config(cfg, sample["dir"], stages["2"]["run_id"], curated["out"], n),
                data,
                "name",
                cfg.name,
            )
            swept = s.run("sweep", sweep_inputs, lambda _run, step: steps.run_sweep_step(sweep_cfg, step))
            adapter = swept["best_checkpoint"]
            data["sweep_key"] = s.records[-1].key

        if cfg.merge and adapter is not None:
            merged_dir = out / f"merged-{step_key('merge', {'adapter': adapter, **data})[:8]}"
            s.run(
                "merge",
                {"adapter": adapter, **data},
                lambda run, step: steps.run_merge(adapter, merged_dir, run.run_id, step),
            )

        serve = steps.serve_spec(cfg, sample["dir"], base, adapter)
        endpoint_box: list = []

        def deploy(_run, _step) -> dict:
            endpoint, outputs = steps.run_serve(serve, workdir, out / "api_key")
            endpoint_box.append(endpoint)
            return outputs

        served = s.run("serve", {"config": serve.config.model_dump(mode="json"), **data}, deploy, always=True)
        data["serve_key"] = s.records[-1].key  # what is served (models, frames, limits) decides the evaluation
        table = None
        if cfg.eval is not None:
            by_stage = {k: f"MLflow run {v['run_id']} ({v['checkpoint']})" for k, v in stages.items()}
            revisions = {serve.config.served_name: by_stage.get("2", f"{cfg.model.preset} (random weights)")}
            if adapter is not None:
                revisions["vidrip-video"] = f"{adapter}" + (
                    f" (sweep of {by_stage['2']})" if cfg.sweep and "2" in by_stage else ""
                )
            ev_cfg = steps.eval_config(cfg, cfg.eval, sample["dir"], served["models"], revisions)
            evaluated = s.run(
                "eval",
                {"config": _inputs_of(ev_cfg), **data},
                lambda _run, step: steps.run_eval(ev_cfg, endpoint_box[0], step),
            )
            table = Path(evaluated["table_md"]).read_text()
            parent.log_text(table, "eval_table.md")
        if not cfg.keep_serving:
            from ray import serve as ray_serve

            ray_serve.delete(serve.name)  # this pipeline's app alone: every other application stays up
        seconds = time.perf_counter() - started
        parent.log_metrics({f"seconds.{record.step}": record.seconds for record in s.records} | {"seconds": seconds})
        summary = {
            "name": cfg.name,
            "run_id": parent.run_id,
            "seconds": round(seconds, 1),
            "steps": [asdict(r) for r in s.records],
            "endpoint": {k: served[k] for k in ("url", "base_url", "models", "api_key_file")},
        }
        summary_path = out / "summary.json"
        summary_path.write_text(json.dumps(summary, indent=1, default=str))
        parent.log_artifact(summary_path)
    return PipelineResult(
        name=cfg.name,
        run_id=parent.run_id,
        steps=s.records,
        summary_path=str(summary_path),
        endpoint=summary["endpoint"],
        table=table,
        seconds=seconds,
    )


def steps_table(records: list[StepRecord]) -> str:
    """The steps as a Markdown table: status, seconds, MLflow run."""
    lines = ["| step | status | seconds | MLflow run |", "|---|---|---:|---|"]
    lines += [f"| {r.step} | {r.status} | {r.seconds:.0f} | {r.run_id} |" for r in records]
    return "\n".join(lines)
