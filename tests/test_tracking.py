"""MLflow lineage: tags, FINISHED / FAILED / KILLED, one store per job without global state, named inputs,
cached fingerprints, store resolution, and `vidrip ui` serving it."""

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from conftest import free_port
from vidrip.data.fingerprint import DigestCache, fingerprint_tree
from vidrip.data.sample.build import SampleConfig
from vidrip.tracking import (
    CHECKPOINT_TAG,
    InputError,
    Lineage,
    ResolvedInput,
    TrackingConfig,
    flatten,
    resolve_tracking_uri,
)


@pytest.fixture
def lineage(tracking, tmp_path) -> Lineage:
    return Lineage(tracking, tmp_path)


def test_finished_run_has_lineage_and_config(lineage, sample_dir):
    cfg = SampleConfig(out="x", seed=4)
    with lineage.run("unit", cfg, dataset=sample_dir) as run:
        run.log_metric("m", 1.0)
    r = run.get()
    assert r.info.status == "FINISHED" and r.data.metrics["m"] == 1.0
    assert r.data.tags["vidrip.job"] == "unit"
    assert r.data.tags["vidrip.dataset_fingerprint"] == fingerprint_tree(sample_dir)
    assert len(r.data.tags["vidrip.config_sha"]) == 16 and r.data.tags["vidrip.git_commit"]
    assert r.data.params["seed"] == "4" and r.data.params["out"] == "x"
    assert lineage.client.get_experiment(r.info.experiment_id).name == "vidrip-unit"
    config = lineage.client.download_artifacts(r.info.run_id, "config.json")
    assert json.loads(Path(config).read_text())["seed"] == 4


def test_failed_run_is_marked_failed_and_error_propagates(lineage):
    with pytest.raises(RuntimeError, match="boom"), lineage.run("unit", SampleConfig()) as run:
        raise RuntimeError("boom")
    assert run.get().info.status == "FAILED"


def test_interrupted_run_is_killed(lineage):
    with pytest.raises(KeyboardInterrupt), lineage.run("unit", SampleConfig()) as run:
        raise KeyboardInterrupt
    assert run.get().info.status == "KILLED"


def test_a_job_inside_another_jobs_run_is_its_child(lineage):
    with lineage.run("outer", SampleConfig()) as outer:
        with lineage.child(outer.run_id).run("inner", SampleConfig()) as inner:
            pass
        with lineage.run("sibling", SampleConfig()) as sibling:  # nothing is nested by accident
            pass
    tags = inner.get().data.tags
    assert tags["mlflow.parentRunId"] == tags["vidrip.parent_run_id"] == outer.run_id
    assert "mlflow.parentRunId" not in sibling.get().data.tags
    assert outer.get().info.status == "FINISHED"


def test_a_run_resumed_by_tag_is_reopened(lineage):
    with lineage.run("unit", SampleConfig(), resume_by=("vidrip.unit_name", "a")) as first:
        pass
    with lineage.run("unit", SampleConfig(), resume_by=("vidrip.unit_name", "a")) as again:
        assert again.get().info.status == "RUNNING"
    with lineage.run("unit", SampleConfig(), resume_by=("vidrip.unit_name", "b")) as other:
        pass
    assert again.run_id == first.run_id != other.run_id
    assert again.get().data.tags["vidrip.resumed"] == "true" and again.get().info.status == "FINISHED"


def test_two_jobs_in_one_process_write_to_their_own_stores(tmp_path, monkeypatch, sample_dir):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = Lineage(TrackingConfig(), tmp_path / "a"), Lineage(TrackingConfig(), tmp_path / "b")
    with a.run("unit", SampleConfig(seed=1), dataset=sample_dir) as run_a:
        with b.run("unit", SampleConfig(seed=2)) as run_b:
            run_a.log_metric("which", 1.0)
            run_b.log_metric("which", 2.0)
        a.register("m", sample_dir, run_a.run_id)
    assert a.uri == f"sqlite:///{tmp_path.resolve() / 'a' / 'mlflow.db'}" != b.uri
    assert [r.data.metrics["which"] for r in a.find_runs("unit")] == [1.0]
    assert [r.data.metrics["which"] for r in b.find_runs("unit")] == [2.0]
    assert a.registry_version("models:/m/1").run_id == run_a.run_id
    with pytest.raises(InputError, match="models:/m/1 is not in the model registry at sqlite"):
        b.registry_version("models:/m/1")
    assert "MLFLOW_TRACKING_URI" not in os.environ and not mlflow.tracking._tracking_service.utils.is_tracking_uri_set()


def test_inputs_are_named_never_guessed(lineage, tmp_path):
    """A run id, a registry reference or a folder; nothing is taken from "the newest run in the store"."""
    folders = [tmp_path / "older", tmp_path / "newer"]
    runs = []
    for folder in folders:
        folder.mkdir()
        with lineage.run("train", SampleConfig(), run_name=folder.name, tags={"vidrip.stage": "2"}) as run:
            run.set_tag(CHECKPOINT_TAG, str(folder))
        runs.append(run.run_id)
    version = lineage.register("vidrip-video", folders[0], runs[0])
    lineage.client.set_registered_model_alias("vidrip-video", "champion", version.version)
    assert lineage.resolve_input(runs[0], "init_from").checkpoint == str(folders[0])
    assert lineage.resolve_input("models:/vidrip-video@champion", "init_from").run_id == runs[0]
    assert lineage.resolve_input("models:/vidrip-video/1", "init_from").checkpoint == str(folders[0])
    assert lineage.resolve_input(str(folders[1]), "init_from") == ResolvedInput(str(folders[1]), None, str(folders[1]))
    with pytest.raises(InputError, match=r"init_from: .* is neither a folder, an MLflow run id"):
        lineage.resolve_input(str(tmp_path / "missing"), "init_from")
    with pytest.raises(InputError, match=f"init_from: no MLflow run {'0' * 32}"):
        lineage.resolve_input("0" * 32, "init_from")
    missing = lineage.missing_input("init_from", "train", {"vidrip.stage": "2"}, "a stage-2 run id")
    lines = str(missing).splitlines()
    assert lines[0] == "init_from: not set; name what to start from (a stage-2 run id)"
    assert [line.split()[:2] for line in lines[2:]] == [[runs[1], "newer"], [runs[0], "older"]]  # newest first


def test_fingerprints_are_cached_by_path_size_and_mtime(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.txt").write_text(f"file {i}")
    cache_file = tmp_path / "digests.json"
    first = fingerprint_tree(data, cache=DigestCache(cache_file))
    assert first == fingerprint_tree(data) and len(json.loads(cache_file.read_text())) == 3
    entries = json.loads(cache_file.read_text())
    entries[str((data / "0.txt").resolve())][2] = "0" * 64  # a cached digest is used without reading the file
    cache_file.write_text(json.dumps(entries))
    assert fingerprint_tree(data, cache=DigestCache(cache_file)) != first
    (data / "0.txt").write_text("file 0, changed")  # size and mtime change: hashed again
    assert fingerprint_tree(data, cache=DigestCache(cache_file)) == fingerprint_tree(data) != first


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
    with Lineage(TrackingConfig(), tmp_path).run("ui-check", SampleConfig()) as run:
        run.log_dict({"answer": "42"}, "answer.json")
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
            f"{base}/api/2.0/mlflow/runs/get?run_id={run.run_id}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = json.loads(r.read())
        assert body["run"]["info"]["status"] == "FINISHED"
        with urllib.request.urlopen(f"{base}/get-artifact?path=answer.json&run_uuid={run.run_id}", timeout=10) as r:
            assert json.loads(r.read()) == {"answer": "42"}
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
