"""The demo's own logic without a cluster: what it submits, and that a wrong config fails before a head starts.
The demo end to end (a head, `ray job submit`, the pipeline, the printout) is tests/test_pipeline.py."""

import shlex
from pathlib import Path

import pytest

from vidrip.config import ConfigError
from vidrip.demo import DemoConfig, client_example, demo_pipeline_config, run_demo, submit_command


def test_the_job_gets_absolute_paths_and_the_cluster_it_is_submitted_to(tmp_path):
    cfg = DemoConfig(workdir=str(tmp_path / "w"), pipeline_overrides=["sweep=null"])
    pipeline, overrides = demo_pipeline_config(cfg)
    assert pipeline.workdir == str(tmp_path / "w") and pipeline.sample.out == str(tmp_path / "w" / "sample")
    assert pipeline.ray.address == "auto" and pipeline.sweep is None
    command = submit_command(cfg, [*overrides, "curate.overrides=[llm.model=a b, 'x={}']"], "sub-1")
    assert command[1:3] == ["job", "submit"] and (Path(command[command.index("--working-dir") + 1]) / "jobs").is_dir()
    assert command[command.index("--submission-id") + 1] == "sub-1"
    argv = shlex.split(shlex.join(command[command.index("--") + 1 :]))  # what Ray's CLI hands the job's shell
    assert argv[:4] == ["python", "jobs/pipeline.py", "--config", "pipeline_tiny"]
    assert argv[4:] == [*overrides, "curate.overrides=[llm.model=a b, 'x={}']"]  # quoting survives the shell


def test_a_wrong_key_in_any_steps_config_fails_before_a_head_starts(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text("stages: [0, 9]\n")
    cfg = DemoConfig(workdir=str(tmp_path / "work"), pipeline_overrides=[f"train.config={bad}"])
    with pytest.raises(ConfigError, match="no stage 9"):
        run_demo(cfg)
    assert not (tmp_path / "work" / "ray").exists()  # no head was started


def test_the_printed_client_example_is_python_that_names_the_endpoint():
    code = client_example("http://127.0.0.1:8000/v1", "/w/api_key", "vidrip-video", "test/a.mp4", "What's shown?")
    compile(code, "example", "exec")
    assert "base_url='http://127.0.0.1:8000/v1'" in code and "open('/w/api_key').read()" in code
    assert '"What\'s shown?"' in code and "model='vidrip-video'" in code
