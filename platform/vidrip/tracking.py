"""MLflow lineage: one owner per job, around its own ``MlflowClient``; no process-global MLflow state.

The store is, in order: ``TrackingConfig.uri``, ``$MLFLOW_TRACKING_URI``, or a SQLite database in the
work directory (``sqlite:///<workdir>/mlflow.db``; MLflow 3 refuses the old ``./mlruns`` file store).
Artifacts go to ``<workdir>/mlartifacts`` unless the server decides.

    lineage = Lineage(cfg.tracking, workdir)                  # one per job; jobs nested in a job share it
    with lineage.run("curate", cfg, dataset=sample_dir) as run:
        run.log_metric("seconds", 3.2)
        with lineage.child(run.run_id).run("train", train_cfg) as child:   # nested under ``run``
            ...
    # FINISHED on success, FAILED on an exception (re-raised), KILLED on Ctrl-C

:class:`Lineage` is the only place that talks to MLflow: it starts and ends runs, finds the runs a job
skips or resumes (:meth:`Lineage.find_runs`), resolves a job's named input (:meth:`Lineage.resolve_input`:
a run id, ``models:/name@alias`` or ``models:/name/version``, or a folder; never "the newest run in the
store"), registers models, and fingerprints data once (file digests cached by path, size and mtime in
``<workdir>/cache/digests.json``). It never calls ``mlflow.set_tracking_uri`` (which MLflow copies into
``MLFLOW_TRACKING_URI`` for the process and its children) and never relies on an "active run": two jobs
in one process, each with its own work directory, each write to their own store.

Lineage tags on every run: ``vidrip.job``, ``vidrip.config_sha``, ``vidrip.git_commit``,
``vidrip.dataset_fingerprint``, ``vidrip.parent_run_id``; the whole config is logged as params and as
``config.json``. ``vidrip ui`` serves the store on 127.0.0.1 with ``mlflow server``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from vidrip.config import StrictConfig
from vidrip.data.fingerprint import DigestCache, fingerprint_tree
from vidrip.paths import console_script, repo_root

__all__ = [
    "CHECKPOINT_TAG",
    "InputError",
    "Lineage",
    "ResolvedInput",
    "TrackedRun",
    "TrackingConfig",
    "config_sha",
    "flatten",
    "git_commit",
    "registry_version",
    "resolve_tracking_uri",
    "serve_ui_command",
]

TAG_PREFIX = "vidrip."
CHECKPOINT_TAG = "vidrip.checkpoint"  # a run that produced a model folder names it here
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
log = logging.getLogger(__name__)


class TrackingConfig(StrictConfig):
    """Where runs are recorded. ``uri=None``: ``$MLFLOW_TRACKING_URI``, else SQLite in the work directory."""

    uri: str | None = None
    experiment_prefix: str = "vidrip"


class InputError(ValueError):
    """A job's input is missing or names nothing; the message lists what could be named instead."""


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


@functools.cache
def git_commit() -> str:
    root = repo_root()
    if root is None:
        return "unknown"
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
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


def config_sha(config: BaseModel) -> str:
    """A short hash of a config's values: equal configs, equal hashes."""
    cfg_json = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(cfg_json.encode()).hexdigest()[:16]


class TrackedRun:
    """One MLflow run, written through its job's client (the fluent ``mlflow.log_*`` API is not used)."""

    def __init__(self, client, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(batch), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=batch[i : i + 100])

    def set_tag(self, key: str, value) -> None:
        self.client.set_tag(self.run_id, key, str(value))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def get(self):
        """The run as MLflow has it now (tags, params, metrics, status)."""
        return self.client.get_run(self.run_id)


@dataclass(frozen=True)
class ResolvedInput:
    """What a job starts from: the model folder, the run that made it (None: a folder of unknown origin),
    and the reference as the user gave it."""

    checkpoint: str
    run_id: str | None
    ref: str


class Lineage:
    """The MLflow lineage of one job (see the module docstring); ``parent_run_id``: runs it starts nest
    under that run unless told otherwise."""

    def __init__(
        self,
        tracking: TrackingConfig,
        workdir: str | Path,
        parent_run_id: str | None = None,
        *,
        _client=None,
        _digests: DigestCache | None = None,
    ):
        import mlflow

        self.tracking = tracking
        self.workdir = Path(workdir).resolve()
        self.uri = resolve_tracking_uri(tracking, self.workdir)
        self.client = _client or mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.parent_run_id = parent_run_id
        self._digests = _digests or DigestCache(self.workdir / "cache" / "digests.json")

    def child(self, parent_run_id: str) -> Lineage:
        """The same store and caches, nesting new runs under ``parent_run_id`` (a job inside a job)."""
        return Lineage(self.tracking, self.workdir, parent_run_id, _client=self.client, _digests=self._digests)

    def experiment_name(self, job: str) -> str:
        return f"{self.tracking.experiment_prefix}-{job}"

    def experiment_id(self, job: str, create: bool = True) -> str | None:
        from mlflow.exceptions import MlflowException

        name = self.experiment_name(job)
        exp = self.client.get_experiment_by_name(name)
        if exp is not None or not create:
            return exp.experiment_id if exp is not None else None
        location = artifact_root(self.workdir).joinpath(name).as_uri() if self.uri.startswith("sqlite:") else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another process
            return self.client.get_experiment_by_name(name).experiment_id

    def fingerprint(self, folder: str | Path, exclude: tuple[str, ...] = ()) -> str:
        """The content fingerprint of ``folder``; files whose path, size and mtime are unchanged since an
        earlier job of this work directory are not hashed again."""
        return fingerprint_tree(folder, exclude, cache=self._digests)

    def find_runs(
        self,
        job: str,
        tags: dict[str, str] | None = None,
        *,
        status: str | None = "FINISHED",
        parent: str | None = None,
    ) -> list:
        """Runs of ``job`` carrying every tag in ``tags`` (``status``, ``parent`` when given), newest first."""
        experiment_id = self.experiment_id(job, create=False)
        if experiment_id is None:
            return []
        clauses = [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
        if status is not None:
            clauses.append(f"attributes.status = '{status}'")
        if parent is not None:
            clauses.append(f"tags.`mlflow.parentRunId` = '{parent}'")
        return list(
            self.client.search_runs(
                [experiment_id], " and ".join(clauses), max_results=1000, order_by=["attributes.start_time DESC"]
            )
        )

    @contextlib.contextmanager
    def run(
        self,
        job: str,
        config: BaseModel,
        *,
        dataset: str | Path | None = None,
        parent_run_id: str | None = None,
        run_name: str | None = None,
        resume_by: tuple[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> Iterator[TrackedRun]:
        """An MLflow run for one job, ended FINISHED, FAILED or KILLED, with lineage tags and the config.

        Nested under ``parent_run_id`` (default: this lineage's parent). ``resume_by=(tag, value)``: the run
        carries that tag; if an earlier run of this job carries it too, that run is reopened instead of
        starting a new one (its params stay as first logged)."""
        parent_run_id = parent_run_id or self.parent_run_id
        experiment_id = self.experiment_id(job)
        earlier = self.find_runs(job, {resume_by[0]: resume_by[1]}, status=None) if resume_by else []
        all_tags = {
            f"{TAG_PREFIX}job": job,
            f"{TAG_PREFIX}config_sha": config_sha(config),
            f"{TAG_PREFIX}git_commit": git_commit(),
            f"{TAG_PREFIX}argv": " ".join(sys.argv)[:500],
            **(tags or {}),
        }
        if dataset is not None:
            all_tags[f"{TAG_PREFIX}dataset"] = str(Path(dataset).resolve())
            all_tags[f"{TAG_PREFIX}dataset_fingerprint"] = self.fingerprint(dataset)
        if parent_run_id is not None:
            all_tags[f"{TAG_PREFIX}parent_run_id"] = parent_run_id
            all_tags["mlflow.parentRunId"] = parent_run_id
        if resume_by is not None:
            all_tags[resume_by[0]] = resume_by[1]
        if earlier:
            run = TrackedRun(self.client, earlier[0].info.run_id, experiment_id)
            log.info("%s %s: reopening MLflow run %s", job, resume_by[1], run.run_id)
            self.client.update_run(run.run_id, status="RUNNING")
            run.set_tags({**all_tags, f"{TAG_PREFIX}resumed": "true"})
        else:
            created = self.client.create_run(experiment_id, tags=all_tags, run_name=run_name)
            run = TrackedRun(self.client, created.info.run_id, experiment_id)
        status = "FAILED"
        try:
            if not earlier:
                cfg_dict = config.model_dump(mode="json")
                run.log_params(flatten(cfg_dict))
                run.log_dict(cfg_dict, "config.json")
            yield run
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.client.set_terminated(run.run_id, status)

    def resolve_input(self, ref: str, what: str) -> ResolvedInput:
        """The model folder ``ref`` names: a run id (its ``vidrip.checkpoint`` tag), ``models:/name@alias``
        or ``models:/name/version`` (the version's source), or a folder. ``what`` names the field in errors."""
        if ref.startswith("models:/"):
            version = self.registry_version(ref, what)
            return ResolvedInput(version.source, version.run_id, ref)
        if RUN_ID.match(ref):
            from mlflow.exceptions import MlflowException

            try:
                run = self.client.get_run(ref)
            except MlflowException:
                raise InputError(f"{what}: no MLflow run {ref} in {self.uri}") from None
            checkpoint = run.data.tags.get(CHECKPOINT_TAG)
            if checkpoint is None:
                raise InputError(f"{what}: MLflow run {ref} ({run.info.run_name}) recorded no checkpoint")
            if run.info.status != "FINISHED":
                raise InputError(f"{what}: MLflow run {ref} ({run.info.run_name}) is {run.info.status}, not FINISHED")
            return ResolvedInput(checkpoint, ref, ref)
        folder = Path(ref).resolve()
        if not folder.is_dir():
            raise InputError(f"{what}: {ref} is neither a folder, an MLflow run id, nor a models:/ reference")
        return ResolvedInput(str(folder), None, ref)

    def registry_version(self, ref: str, what: str = "checkpoint"):
        """The ``ModelVersion`` that ``models:/name@alias`` or ``models:/name/version`` names."""
        return registry_version(ref, self.uri, what)

    def missing_input(self, what: str, job: str, tags: dict[str, str], hint: str) -> InputError:
        """The error for a job started without naming its input, listing the runs it could name."""
        runs = [r for r in self.find_runs(job, tags) if CHECKPOINT_TAG in r.data.tags]
        lines = [f"{what}: not set; name what to start from ({hint})"]
        if runs:
            lines.append(f"candidates in {self.uri} (run id, name, started):")
            for r in runs[:20]:
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.info.start_time / 1000))
                lines.append(f"  {r.info.run_id}  {r.info.run_name}  {started}")
        else:
            lines.append(f"no FINISHED run with a checkpoint in {self.uri} to choose from")
        return InputError("\n".join(lines))

    def register(self, name: str, source: str | Path, run_id: str | None, tags: dict[str, str] | None = None):
        """Register the model folder ``source`` (produced by ``run_id``) as a new version of ``name``.

        The registry stores a pointer, not a copy: a 7B checkpoint is not uploaded twice."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(
                name, description="vidrip video-language model. Research use only, not for clinical decisions."
            )
        return self.client.create_model_version(name, source=str(Path(source).resolve()), run_id=run_id, tags=tags)


def registry_version(ref: str, tracking_uri: str | None, what: str = "checkpoint"):
    """The ``ModelVersion`` that ``models:/name@alias`` or ``models:/name/version`` names in the store at
    ``tracking_uri`` (None: ``$MLFLOW_TRACKING_URI``); :class:`InputError` naming the store if there is none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, sep, alias = ref.removeprefix("models:/").partition("@")
    try:
        if sep:
            return client.get_model_version_by_alias(name, alias)
        name, _, number = name.partition("/")
        return client.get_model_version(name, number)
    except MlflowException as exc:
        where = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "the default MLflow store"
        raise InputError(f"{what}: {ref} is not in the model registry at {where}: {exc}") from None


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
