"""The demo end to end on the session's Ray cluster: sample -> served on Ray Serve -> asked -> MLflow run."""

import json
from pathlib import Path

import mlflow
import pytest

from conftest import SMALL_SAMPLE, free_port
from vidrip.demo import DemoConfig, ensure_sample, run_demo
from vidrip.runtime import RayConfig


@pytest.mark.integration
def test_demo_records_a_finished_run_with_the_answer(ray_head, tmp_path, tracking, sample_dir):
    cfg = DemoConfig(
        workdir=str(tmp_path / "work"),
        sample={"out": str(sample_dir), **SMALL_SAMPLE},
        ray=RayConfig(address=ray_head.config.gcs_address, ports=ray_head.config.ports),
        tracking=tracking,
        train_config=None,  # training has its own tests (tests/test_train.py); `make demo` trains
        max_new_tokens=4,
        serve_port=free_port(),
        eval_overrides=["limit=2", "models.0.max_tokens=8", "judge.max_retries=1"],
    )
    # the demo connects with the head's own token
    (tmp_path / "work" / "ray").mkdir(parents=True)
    (tmp_path / "work" / "ray" / "auth_token").write_text((ray_head.workdir / "ray" / "auth_token").read_text())
    out = run_demo(cfg)
    run = mlflow.MlflowClient().get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    artifact = mlflow.artifacts.download_artifacts(run_id=out["run_id"], artifact_path="answer.json")
    answer = json.loads(Path(artifact).read_text())
    assert answer["question"] and answer["reference_answer"].count("Diagnosis: ") == 1
    assert isinstance(answer["answer"], str) and answer["completion_tokens"] <= 4
    assert answer["served_model"] == "vidrip-base"  # nothing trained: the demo's model, served on Ray Serve
    assert answer["frames"] == len(answer["frame_timestamps"]) == 6  # 6 s video, 1 frame per second
    assert answer["frame_timestamps"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert json.loads((tmp_path / "work" / "demo_answer.json").read_text())["answer"] == answer["answer"]
    # the evaluation of what is served (nothing trained: the stage-2 row is the base), judged by the same endpoint
    evaluation = answer["evaluation"]
    table = evaluation["table"]
    assert "| Model | Context | Correct | Detail | Avg | Norm-Avg |" in table
    assert "| stage 2 (image + clip SFT) |" in table and "stage 3" not in table
    assert "Judge: vidrip-base" in table and "stand-in" in table and "2 items" in table
    assert "Judge-free metrics:" in table
    calls = evaluation["calls"]
    assert calls["stage 2 (image + clip SFT)"]["requests"] == 2 and 6 <= calls["judge"]["requests"] <= 12
    eval_run = mlflow.MlflowClient().get_run(evaluation["run_id"])
    assert eval_run.info.status == "FINISHED" and eval_run.data.tags["vidrip.parent_run_id"] == out["run_id"]
    assert "stage_2__image___clip_SFT_.norm_avg" in eval_run.data.metrics


def test_existing_sample_with_the_same_config_is_reused(sample_dir):
    from vidrip.data.sample.build import SampleConfig

    before = (sample_dir / "metadata.json").stat().st_mtime_ns
    ensure_sample(SampleConfig(out=str(sample_dir), **SMALL_SAMPLE))
    assert (sample_dir / "metadata.json").stat().st_mtime_ns == before


def test_a_bad_training_config_fails_before_ray_starts(sample_dir, tmp_path, tracking):
    from vidrip.config import ConfigError

    bad = tmp_path / "train.yaml"
    bad.write_text("stages: [0, 9]\n")
    cfg = DemoConfig(
        workdir=str(tmp_path / "work"),
        sample={"out": str(sample_dir), **SMALL_SAMPLE},
        tracking=tracking,
        train_config=str(bad),
    )
    with pytest.raises(ConfigError, match="no stage 9"):
        run_demo(cfg)
    assert not (tmp_path / "work" / "ray").exists()  # no head was started
