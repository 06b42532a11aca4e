"""MLflow tracking: lineage tags, FINISHED / FAILED / KILLED, store resolution, and `vidrip ui` serving it."""

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from conftest import free_port
from vidrip.data.fingerprint import fingerprint_tree
from vidrip.data.sample.build import SampleConfig
from vidrip.tracking import TrackingConfig, flatten, job_run, resolve_tracking_uri


def _run(run_id):
    return mlflow.MlflowClient().get_run(run_id)


def test_finished_run_has_lineage_and_config(tracking, tmp_path, sample_dir):
    cfg = SampleConfig(out="x", seed=4)
    with job_run("unit", cfg, tracking=tracking, workdir=tmp_path, dataset=sample_dir) as run:
        mlflow.log_metric("m", 1.0)
    r = _run(run.info.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.tags["vidrip.job"] == "unit"
    assert r.data.tags["vidrip.dataset_fingerprint"] == fingerprint_tree(sample_dir)
    assert len(r.data.tags["vidrip.config_sha"]) == 16 and r.data.tags["vidrip.git_commit"]
    assert r.data.params["seed"] == "4" and r.data.params["out"] == "x"
    exp = mlflow.get_experiment(r.info.experiment_id)
    assert exp.name == "vidrip-unit"
    config = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="config.json")
    assert json.loads(Path(config).read_text())["seed"] == 4


def test_failed_run_is_marked_failed_and_error_propagates(tracking, tmp_path):
    with (
        pytest.raises(RuntimeError, match="boom"),
        job_run("unit", SampleConfig(), tracking=tracking, workdir=tmp_path) as run,
    ):
        raise RuntimeError("boom")
    assert _run(run.info.run_id).info.status == "FAILED"


def test_interrupted_run_is_killed(tracking, tmp_path):
    with pytest.raises(KeyboardInterrupt), job_run("unit", SampleConfig(), tracking=tracking, workdir=tmp_path) as run:
        raise KeyboardInterrupt
    assert _run(run.info.run_id).info.status == "KILLED"


def test_nested_run_points_at_its_parent(tracking, tmp_path):
    with job_run("parent", SampleConfig(), tracking=tracking, workdir=tmp_path) as parent:
        pass
    with job_run(
        "child", SampleConfig(), tracking=tracking, workdir=tmp_path, parent_run_id=parent.info.run_id
    ) as child:
        pass
    tags = _run(child.info.run_id).data.tags
    assert tags["mlflow.parentRunId"] == tags["vidrip.parent_run_id"] == parent.info.run_id


def test_a_job_inside_another_jobs_run_is_its_child(tracking, tmp_path):
    with job_run("outer", SampleConfig(), tracking=tracking, workdir=tmp_path) as outer:
        with job_run("inner", SampleConfig(), tracking=tracking, workdir=tmp_path) as inner:
            pass
        assert mlflow.active_run().info.run_id == outer.info.run_id
    assert _run(inner.info.run_id).data.tags["mlflow.parentRunId"] == outer.info.run_id
    assert _run(outer.info.run_id).info.status == "FINISHED"


def test_store_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == "http://127.0.0.1:5999"
    assert resolve_tracking_uri(TrackingConfig(uri="sqlite:////x.db"), tmp_path) == "sqlite:////x.db"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}


@pytest.mark.integration
def test_ui_serves_the_work_directory_store(tmp_path, monkeypatch, venv_bin, subprocess_env):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with job_run("ui-check", SampleConfig(), tracking=TrackingConfig(), workdir=tmp_path) as run:
        mlflow.log_dict({"answer": "42"}, "answer.json")
    port = free_port()
    env = {k: v for k, v in subprocess_env.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [venv_bin / "vidrip", "ui", "--workdir", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(0.5)
        req = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/get?run_id={run.info.run_id}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = json.loads(r.read())
        assert body["run"]["info"]["status"] == "FINISHED"
        with urllib.request.urlopen(
            f"{base}/get-artifact?path=answer.json&run_uuid={run.info.run_id}", timeout=10
        ) as r:
            assert json.loads(r.read()) == {"answer": "42"}
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
