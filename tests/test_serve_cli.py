"""`vidrip serve` and `serve run` deploy serve_apps/tiny.yaml for real on the session's Ray head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import free_port
from serve_models import make_adapter, make_base, make_video
from shared_cluster import Watcher, other_app, stop_serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-cli")
    base = make_base(root / "base")
    media = root / "media"
    media.mkdir()
    return {
        "adapter": make_adapter(base, root / "adapter", seed=3),
        "media": media,
        "clip": make_video(media / "clip.mp4", 2.0),
    }


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 240) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line.rstrip())
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never printed; output:\n" + "\n".join(lines[-40:]))


def test_bad_override_names_the_key(venv_bin, repo):
    out = subprocess.run(
        [venv_bin / "vidrip", "serve", "limits.max_tokenz=3"], capture_output=True, text=True, timeout=120, cwd=repo
    )
    assert out.returncode == 2
    assert "serve_tiny.yaml): applications[0].args.limits.max_tokenz" in out.stderr  # the packaged default
    assert "Traceback" not in out.stderr


def test_vidrip_serve_prints_a_key_answers_and_stops_on_sigterm(ray_head, served_files, venv_bin, repo, subprocess_env):
    port = free_port()
    cmd = [
        venv_bin / "vidrip",
        "serve",
        "--workdir",
        str(ray_head.workdir),
        "--ray-address",
        ray_head.config.gcs_address,
        "--port",
        str(port),
        f"adapters.vidrip-video={served_files['adapter']}",
        f"media.root={served_files['media']}",
    ]
    env = {k: v for k, v in subprocess_env.items() if k not in ("VIDRIP_API_KEY", "MLFLOW_TRACKING_URI")}
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = _wait_for_line(proc, "Ctrl-C stops it")
        key = next(line.rsplit(": ", 1)[1] for line in lines if line.startswith("API key"))
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
        ask = subprocess.run(
            [
                sys.executable,
                "serve_apps/client.py",
                "--base-url",
                f"http://127.0.0.1:{port}/v1",
                "--api-key",
                key,
                "--model",
                "vidrip-video",
                "--video",
                str(served_files["clip"]),
                "--max-tokens",
                "4",
            ],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ask.returncode == 0, ask.stderr
        assert "4 completion tokens" in ask.stderr or "completion tokens" in ask.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_serve(ray_head)  # vidrip serve deleted its app and left Serve running, as it must on a shared cluster
    assert ray_head.proc.poll() is None, "vidrip serve stopped a Ray head it did not start"


def test_serve_run_deploys_tiny_yaml(ray_head, served_files, venv_bin, repo, subprocess_env, tmp_path):
    spec = yaml.safe_load((repo / "serve_apps" / "tiny.yaml").read_text())
    port = free_port()
    spec["http_options"]["port"] = port
    args = spec["applications"][0]["args"]
    args["adapters"] = {"vidrip-video": str(served_files["adapter"])}
    args["media"]["root"] = str(served_files["media"])
    # the replicas read the key from their own environment, which is the cluster's, not this shell's
    spec["applications"][0]["runtime_env"] = {"env_vars": {"VIDRIP_API_KEY": "k-serve-run"}}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(spec))
    env = {**subprocess_env, **ray_head.submit_env()}
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [venv_bin / "serve", "run", str(config), "--address", ray_head.config.gcs_address],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, models = time.monotonic() + 240, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k-serve-run"})
                if r.status_code == 200:
                    models = [m["id"] for m in r.json()["data"]]
                    break
            except httpx.TransportError:
                pass
            time.sleep(2)
        assert models == ["vidrip-base", "vidrip-video"], proc.stdout.read() if proc.poll() is not None else models
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        stop_serve(ray_head)


def test_vidrip_eval_deploys_its_app_beside_another_and_deletes_only_its_own(
    ray_head, served_files, venv_bin, repo, subprocess_env, sample_dir, tmp_path
):
    """`vidrip eval` with `base_url: null` on a cluster where another team's app runs: it reuses the running
    Serve instance (its port), deploys its app, evaluates over HTTP, deletes its app alone."""
    import ray
    from ray import serve

    from vidrip.runtime import connect
    from vidrip.serve.launch import running_serve_http

    connect(ray_head.config, ray_head.workdir)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        serve.run(other_app(), name="other", route_prefix="/other")
        _, port = running_serve_http()
    finally:
        ray.shutdown()
    model = {"name": "base", "base_url": None, "model": "vidrip-base", "max_tokens": 4, "num_frames": 2}
    serve_overrides = ["adapters={}", f"media.root={sample_dir}"]
    cmd = [
        venv_bin / "vidrip",
        "eval",
        f"test_set={sample_dir}/test.json",
        "limit=1",
        f"models=[{json.dumps(model)}]",
        "judge=null",
        "judge_free.similarity=false",
        f"serve.overrides={json.dumps(serve_overrides)}",
        f"serve.port={free_port()}",  # Serve already runs: its own port is used, this one is not
        f"ray.address={ray_head.config.gcs_address}",
        f"workdir={ray_head.workdir}",
        f"out={tmp_path / 'eval'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    env = {k: v for k, v in subprocess_env.items() if k not in ("VIDRIP_API_KEY", "MLFLOW_TRACKING_URI")}
    watcher = Watcher(f"http://127.0.0.1:{port}/other")
    try:
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        watcher.stop()
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "| base |" in done.stdout and "1 items" in done.stdout
        assert watcher.asked >= 5 and watcher.failures == []
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=10).text == "other"
        connect(ray_head.config, ray_head.workdir)
        try:
            assert set(serve.status().applications) == {"other"}  # the evaluation's app alone was deleted
        finally:
            ray.shutdown()
    finally:
        watcher.stop()
        stop_serve(ray_head)
    assert "MLFLOW_TRACKING_URI" not in os.environ
