"""MLflow tracking: one experiment per job kind, one run per job, lineage tags, runs never left RUNNING.

The store is, in order: ``TrackingConfig.uri``, ``$MLFLOW_TRACKING_URI``, or a SQLite database in the
work directory (``sqlite:///<workdir>/mlflow.db``; MLflow 3 refuses the old ``./mlruns`` file store).
Artifacts go to ``<workdir>/mlartifacts`` unless the server decides.

    with job_run("demo", cfg, tracking=cfg.tracking, workdir=wd, dataset=sample_dir) as run:
        mlflow.log_metric("seconds", 3.2)
    # FINISHED on success, FAILED on an exception (re-raised), KILLED on Ctrl-C

Lineage tags on every run: ``vidrip.job``, ``vidrip.config_sha``, ``vidrip.git_commit``,
``vidrip.dataset_fingerprint``, ``vidrip.parent_run_id``; the whole config is logged as params and as
``config.json``. ``vidrip ui`` serves the store on 127.0.0.1 with ``mlflow server``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from vidrip.config import StrictConfig
from vidrip.data.fingerprint import fingerprint_tree
from vidrip.paths import console_script, repo_root

__all__ = [
    "TrackingConfig",
    "config_sha",
    "flatten",
    "git_commit",
    "job_run",
    "register_checkpoint",
    "resolve_tracking_uri",
    "search_runs",
    "serve_ui_command",
]

TAG_PREFIX = "vidrip."
log = logging.getLogger(__name__)


class TrackingConfig(StrictConfig):
    """Where runs are recorded. ``uri=None``: ``$MLFLOW_TRACKING_URI``, else SQLite in the work directory."""

    uri: str | None = None
    experiment_prefix: str = "vidrip"


def resolve_tracking_uri(cfg: TrackingConfig, workdir: str | Path) -> str:
    if cfg.uri:
        return cfg.uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = Path(workdir).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def artifact_root(workdir: str | Path) -> Path:
    return Path(workdir).resolve() / "mlartifacts"


def git_commit() -> str:
    root = repo_root()
    if root is None:
        return "unknown"
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10
    )
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def _ensure_experiment(name: str, workdir: Path) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = artifact_root(workdir).joinpath(name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def config_sha(config: BaseModel) -> str:
    """A short hash of a config's values: equal configs, equal hashes."""
    cfg_json = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(cfg_json.encode()).hexdigest()[:16]


@contextlib.contextmanager
def job_run(
    job: str,
    config: BaseModel,
    *,
    tracking: TrackingConfig,
    workdir: str | Path,
    dataset: str | Path | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    resume_by: tuple[str, str] | None = None,
) -> Iterator:
    """An MLflow run for one job, ended FINISHED, FAILED or KILLED, with lineage tags and the config.

    Nested under ``parent_run_id``, or under the run active in this process if there is one.
    ``resume_by=(tag, value)``: the run carries that tag; if an earlier run of this job carries it too,
    that run is reopened instead of starting a new one (its params stay as first logged)."""
    import mlflow

    workdir = Path(workdir).resolve()
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking, workdir))
    active = mlflow.active_run()
    if parent_run_id is None and active is not None:
        parent_run_id = active.info.run_id  # a job started inside another job's run is its child
    experiment = f"{tracking.experiment_prefix}-{job}"
    experiment_id = _ensure_experiment(experiment, workdir)
    earlier = search_runs(experiment, f"tags.`{resume_by[0]}` = '{resume_by[1]}'") if resume_by else []
    resume_run_id = earlier[0].info.run_id if earlier else None
    cfg_dict = config.model_dump(mode="json")
    tags = {
        f"{TAG_PREFIX}job": job,
        f"{TAG_PREFIX}config_sha": config_sha(config),
        f"{TAG_PREFIX}git_commit": git_commit(),
        f"{TAG_PREFIX}argv": " ".join(sys.argv)[:500],
    }
    if dataset is not None:
        tags[f"{TAG_PREFIX}dataset"] = str(Path(dataset).resolve())
        tags[f"{TAG_PREFIX}dataset_fingerprint"] = fingerprint_tree(dataset)
    if parent_run_id is not None:
        tags[f"{TAG_PREFIX}parent_run_id"] = parent_run_id
        tags["mlflow.parentRunId"] = parent_run_id
    if resume_by is not None:
        tags[resume_by[0]] = resume_by[1]
    if resume_run_id is not None:
        log.info("%s %s: reopening MLflow run %s", job, resume_by[1], resume_run_id)
        run = mlflow.start_run(run_id=resume_run_id, nested=active is not None)
        mlflow.set_tags({**tags, f"{TAG_PREFIX}resumed": "true"})
    else:
        run = mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, tags=tags, nested=parent_run_id is not None
        )
    status = "FAILED"
    try:
        if resume_run_id is None:
            params = flatten(cfg_dict)
            for i in range(0, len(params), 100):  # MLflow's batch limit
                mlflow.log_params(dict(list(params.items())[i : i + 100]))
            mlflow.log_dict(cfg_dict, "config.json")
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status=status)


def search_runs(experiment: str, query: str) -> list:
    """Runs of ``experiment`` matching the MLflow filter ``query``, newest first (none if it does not exist)."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return mlflow.search_runs(
        [exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], output_format="list"
    )


def serve_ui_command(tracking: TrackingConfig, workdir: str | Path, port: int = 5000) -> list[str]:
    """``mlflow server`` on 127.0.0.1 against this work directory's store."""
    return [
        console_script("mlflow"),
        "server",
        "--backend-store-uri",
        resolve_tracking_uri(tracking, workdir),
        "--default-artifact-root",
        artifact_root(workdir).as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def register_checkpoint(name: str, source: str | Path, run_id: str, tags: dict[str, str] | None = None):
    """Register the model folder ``source`` (produced by ``run_id``) as a new version of ``name``.

    The registry stores a pointer, not a copy: a 7B checkpoint is not uploaded twice. Resolve it later
    with ``MlflowClient().get_model_version_by_alias(name, alias).source``.
    """
    import mlflow

    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(
            name, description="vidrip video-language model. Research use only, not for clinical decisions."
        )
    return client.create_model_version(name, source=str(Path(source).resolve()), run_id=run_id, tags=tags or {})
