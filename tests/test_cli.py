"""The `vidrip` command: every subcommand listed, useful help, clear errors before any work starts."""

import subprocess

ALL = ["sample", "curate", "train", "tune", "merge", "convert", "serve", "eval", "demo", "ui", "head", "validate"]


def _vidrip(venv_bin, *args):
    return subprocess.run([venv_bin / "vidrip", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand(venv_bin):
    out = _vidrip(venv_bin, "--help")
    assert out.returncode == 0
    for cmd in ALL:
        assert f"\n    {cmd} " in out.stdout, cmd
    assert "Research use only, not for clinical decisions" in " ".join(out.stdout.split())


def test_eval_help_and_export_usage(venv_bin):
    out = _vidrip(venv_bin, "eval", "--help")
    assert out.returncode == 0
    assert "export-lmms-eval" in out.stdout and "--task" in out.stdout and "judge" in out.stdout
    out = _vidrip(venv_bin, "eval", "export-lmms-eval")
    assert out.returncode == 2 and "usage: vidrip eval export-lmms-eval DIR" in out.stderr


def test_eval_with_endpoints_and_no_serve_section_says_which_keys(venv_bin, tmp_path, sample_dir):
    out = _vidrip(venv_bin, "eval", f"test_set={sample_dir}/test.json", "serve=null", f"out={tmp_path}/eval")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "models[0].base_url, models[1].base_url, judge.base_url: not set" in out.stderr
    assert not (tmp_path / "eval").exists()


def test_config_error_is_a_clear_message_not_a_traceback(venv_bin, tmp_path):
    bad = tmp_path / "demo.yaml"
    bad.write_text("workdirr: x\n")
    out = _vidrip(venv_bin, "demo", "--config", str(bad))
    assert out.returncode == 2
    assert f"{bad}: unknown key 'workdirr'" in out.stderr
    assert "Traceback" not in out.stderr


def test_sample_help_shows_options(venv_bin):
    out = _vidrip(venv_bin, "sample", "--help")
    assert "--out" in out.stdout and "--seed" in out.stdout and "key=value" in out.stdout


def test_tune_and_train_without_a_named_start_refuse_before_starting_ray(venv_bin, tmp_path, subprocess_env):
    """No "newest run in the store": without init_from both list the candidates and start no Ray head."""
    env = {k: v for k, v in subprocess_env.items() if k != "MLFLOW_TRACKING_URI"}
    common = [f"workdir={tmp_path}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    for command in (["tune"], ["train", "--stages", "3"]):
        out = subprocess.run(
            [venv_bin / "vidrip", *command, *common], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
        )
        assert out.returncode == 1 and "error: init_from: not set" in out.stderr, out.stderr[-2000:]
        assert "no FINISHED run with a checkpoint" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "ray").exists()  # refused before a Ray head was started


def test_curate_help_names_train_detector(venv_bin):
    out = _vidrip(venv_bin, "curate", "--help")
    assert out.returncode == 0
    assert "train-detector" in out.stdout and "--config" in out.stdout


def test_curate_without_inputs_is_a_config_error_naming_the_key(venv_bin, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: x\n")
    out = _vidrip(venv_bin, "curate", "--config", str(cfg))
    assert out.returncode == 2 and "inputs" in out.stderr and "Traceback" not in out.stderr


def test_curate_with_a_missing_detector_says_how_to_train_one(venv_bin, tmp_path, sample_dir):
    out = _vidrip(
        venv_bin,
        "curate",
        "--config",
        "jobs/configs/curate.yaml",
        f"inputs=[{sample_dir}/raw]",
        f"detect.weights={tmp_path}/none.pt",
        f"out={tmp_path}/out",
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "detect.weights" in out.stderr and "vidrip curate train-detector" in out.stderr


def test_every_default_config_is_packaged_and_its_help_says_which(venv_bin):
    from vidrip import cli
    from vidrip.config import config_file

    for command in ("CURATE", "DETECTOR", "TRAIN", "TUNE", "SERVE", "EVAL", "PIPELINE"):
        assert config_file(getattr(cli, f"{command}_CONFIG")).is_file(), command
    out = _vidrip(venv_bin, "train", "--help")
    assert f"(default: train_tiny, packaged: {config_file('train_tiny')})" in " ".join(out.stdout.split())
