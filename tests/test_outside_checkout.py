"""The library outside the checkout: its defaults (configs, DeepSpeed JSONs) are package data, so the
commands work from any folder, and the wheel carries them."""

import shutil
import subprocess
import sys
import time
import zipfile

from vidrip import cli
from vidrip.config import config_file, load_config, packaged_configs


def _vidrip(venv_bin, cwd, env, *args):
    return subprocess.run([venv_bin / "vidrip", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_train_dry_run_with_the_default_config_outside_the_checkout(venv_bin, tmp_path, subprocess_env):
    out = _vidrip(venv_bin, tmp_path, subprocess_env, "train", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert [f"stage {i}:" in out.stdout for i in range(4)] == [True] * 4
    assert "ZeRO-2" in out.stdout and "ZeRO-3" in out.stdout  # the packaged DeepSpeed JSONs were read
    assert list(tmp_path.iterdir()) == []  # a plan writes nothing


def test_help_shows_the_packaged_default_outside_the_checkout(venv_bin, tmp_path, subprocess_env):
    out = _vidrip(venv_bin, tmp_path, subprocess_env, "eval", "--help")
    assert out.returncode == 0
    shown = " ".join(out.stdout.split())
    assert f"(default: eval, packaged: {config_file('eval')})" in shown
    assert config_file("eval").is_file()


def test_tune_and_pipeline_configs_load_outside_the_checkout(tmp_path, monkeypatch):
    """What `vidrip tune` and `vidrip pipeline` load before any work: their default configs and, for the
    pipeline, every step's (`validate`), with the current directory outside the checkout."""
    from vidrip.pipeline.config import PipelineConfig
    from vidrip.pipeline.run import validate
    from vidrip.sweep.run import SweepConfig

    monkeypatch.chdir(tmp_path)
    sweep = load_config(SweepConfig, cli.TUNE_CONFIG, [f"workdir={tmp_path}/work"])
    assert config_file(sweep.deepspeed).is_file() and sweep.space
    validate(load_config(PipelineConfig, cli.PIPELINE_CONFIG, [f"workdir={tmp_path}/work"]))
    validate(PipelineConfig(workdir=str(tmp_path / "work")))  # the schema's own step defaults
    assert list(tmp_path.iterdir()) == []


def test_the_wheel_carries_the_packaged_configs(repo, tmp_path):
    src = tmp_path / "src"  # a copy: the build leaves build/ and *.egg-info beside the sources
    shutil.copytree(repo / "platform", src / "platform", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(repo / name, src / name)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path],
        check=True,
        timeout=120,
    )
    seconds = time.perf_counter() - started
    (wheel,) = tmp_path.glob("vidrip-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in packaged_configs():
        assert f"vidrip/defaults/{config_file(name).name}" in names
    assert {"vidrip/defaults/zero2.json", "vidrip/defaults/zero3.json", "vidrip/defaults/train_tiny.yaml"} <= names
    assert seconds < 60, f"building the wheel took {seconds:.0f} s"


def test_the_demo_job_gets_its_pipeline_config_by_name_or_by_its_path_in_the_repository(repo, tmp_path):
    from vidrip.demo import DemoConfig, submit_command

    def job_config(pipeline: str) -> str:
        command = submit_command(DemoConfig(pipeline=pipeline), [], "sub-1")
        return command[command.index("--config") + 1]

    assert job_config("pipeline_tiny") == "pipeline_tiny"  # the job, in a copy of the repository, loads it too
    assert job_config(str(repo / "jobs/configs/pipeline_ov7b.yaml")) == "jobs/configs/pipeline_ov7b.yaml"
    assert job_config(str(tmp_path / "p.yaml")) == str(tmp_path / "p.yaml")  # outside: a head here reads it
