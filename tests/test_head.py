"""`vidrip head` keeps a loopback head up; `ray job submit` runs real jobs on it; Ctrl-C stops only it."""

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from vidrip.runtime import RayPorts

OFFSET = 3000  # beside the session head (1000) and a demo head (0)

JOB = """
import os, ray
ray.init()
print("RESULT", ray.get(ray.remote(lambda x: x * 7).remote(6)), os.environ["VIDRIP_JOB_MARK"])
"""


def _submit(venv_bin, env, job_dir, dashboard, entry):
    return subprocess.run(
        [
            venv_bin / "ray",
            "job",
            "submit",
            "--address",
            dashboard,
            "--working-dir",
            str(job_dir),
            "--runtime-env-json",
            json.dumps({"env_vars": {"VIDRIP_JOB_MARK": "marked"}}),
            "--",
            *entry,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.integration
def test_head_runs_submitted_jobs_and_stops_on_ctrl_c(tmp_path, venv_bin, subprocess_env):
    ports = RayPorts().shifted(OFFSET)
    overrides = [f"ray.ports.{k}={v}" for k, v in ports.model_dump().items()]
    head = subprocess.Popen(
        [venv_bin / "vidrip", "head", f"workdir={tmp_path / 'work'}", "ray.num_cpus=1", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env,
        start_new_session=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while not any(line.startswith("  export ") for line in lines):
            assert time.monotonic() < deadline and head.poll() is None, "".join(lines)
            lines.append(head.stdout.readline())
        exports = next(line for line in lines if line.startswith("  export ")).split()[1:]
        env = {**subprocess_env, **dict(item.split("=", 1) for item in exports)}
        assert env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "work" / "ray" / "auth_token")
        dashboard = f"http://127.0.0.1:{ports.dashboard}"
        job_dir = tmp_path / "job"
        job_dir.mkdir()
        (job_dir / "job.py").write_text(JOB)

        ok = _submit(venv_bin, env, job_dir, dashboard, ["python", "job.py"])
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "RESULT 42 marked" in ok.stdout
        assert "succeeded" in ok.stdout + ok.stderr

        (job_dir / "fail.py").write_text("raise SystemExit('the job failed on purpose')\n")
        bad = _submit(venv_bin, env, job_dir, dashboard, ["python", "fail.py"])
        assert bad.returncode != 0
        assert "the job failed on purpose" in bad.stdout + bad.stderr and "failed" in bad.stdout + bad.stderr

        (tmp_path / "wrong_token").write_text("0" * 64)
        wrong = {**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "wrong_token")}
        refused = _submit(venv_bin, wrong, job_dir, dashboard, ["python", "job.py"])
        assert refused.returncode != 0
        assert "Invalid authentication token" in refused.stdout + refused.stderr
    finally:
        children = psutil.Process(head.pid).children(recursive=True)
        os.kill(head.pid, signal.SIGINT)
        head.wait(timeout=90)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []
