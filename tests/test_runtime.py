"""Ray on loopback, offline: every listening socket is loopback, and no process reaches for the network."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from vidrip import netguard
from vidrip.runtime import LocalRayHead, RayConfig, RayPorts, effective_offline_env, offline_env


@pytest.mark.parametrize(
    "target, loopback",
    [
        (("127.0.0.1", 80), True),
        (("127.8.9.10", 80), True),
        (("::1", 80, 0, 0), True),
        ("localhost", True),
        ("/tmp/ray/session/sockets/raylet", True),
        (("0.0.0.0", 8000), True),
        ((socket.gethostname(), 80), True),
        (("169.254.169.254", 80), False),
        ("metadata.google.internal", False),
        ("usage-stats.ray.io", False),
        (("10.0.0.1", 443), False),
        (("192.168.1.5", 443), False),
        (("8.8.8.8", 53), False),
        (("fd00::2", 80, 0, 0), False),
    ],
)
def test_loopback_classification(target, loopback):
    assert netguard.is_loopback_target(target) is loopback


def test_guard_records_attempts_in_a_child_process_without_sending_anything(tmp_path):
    """A child started with guard_env raises the audit events a connect and a lookup would raise (no socket,
    no traffic): the guard must record the two non-loopback ones, and not the loopback one."""
    code = (
        "import sys\n"
        "sys.audit('socket.connect', object(), ('169.254.169.254', 80))\n"
        "sys.audit('socket.getaddrinfo', 'metadata.google.internal', 80, 0, 0, 0)\n"
        "sys.audit('socket.connect', object(), ('127.0.0.1', 80))\n"
    )
    subprocess.run([sys.executable, "-c", code], env=netguard.guard_env(tmp_path), check=True)
    assert [(a["event"], a["target"]) for a in netguard.attempts(tmp_path)] == [
        ("socket.connect", "('169.254.169.254', 80)"),
        ("socket.getaddrinfo", "'metadata.google.internal'"),
    ]


def test_offline_env_turns_off_phoning_home():
    env = offline_env()
    assert env["HF_HUB_OFFLINE"] == "1" and env["YOLO_OFFLINE"] == "1" and env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["RAY_USAGE_STATS_REPORT_URL"].startswith("http://127.0.0.1:")
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_a_users_own_setting_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert effective_offline_env()["HF_HUB_OFFLINE"] == "0"
    assert LocalRayHead(RayConfig(), tmp_path).env()["HF_HUB_OFFLINE"] == "0"
    assert LocalRayHead(RayConfig(), tmp_path).env()["YOLO_OFFLINE"] == "1"


@pytest.mark.integration
def test_ray_job_makes_no_network_attempt(ray_client, guard_dir):
    import ray

    def _work(x):
        """A Ray task that imports and uses the libraries that like to phone home."""
        import doctr.models  # noqa: F401
        import mlflow  # noqa: F401
        import ultralytics  # noqa: F401

        from vidrip.model.loading import ModelConfig, load_model, load_processor

        cfg = ModelConfig(preset="tiny")
        model, processor = load_model(cfg), load_processor(cfg)
        ids = processor.tokenizer("<|im_start|>user\nhi", return_tensors="pt")
        guarded = "vidrip.netguard" in sys.modules and os.environ.get(netguard.ENV_VAR)
        return x, int(model(**ids).logits.shape[-1]), guarded, os.getpid()

    results = ray.get([ray.remote(num_cpus=1)(_work).remote(i) for i in range(2)])
    assert [r[:3] for r in results] == [(0, 151648, str(guard_dir)), (1, 151648, str(guard_dir))]
    assert os.getpid() not in {r[3] for r in results}  # ran in Ray's worker processes, under the guard
    assert netguard.attempts(guard_dir) == []


@pytest.mark.integration
def test_head_listens_on_loopback_only_and_its_token_is_required(ray_head):
    import urllib.error
    import urllib.request

    procs = [psutil.Process(ray_head.proc.pid), *psutil.Process(ray_head.proc.pid).children(recursive=True)]
    listening = set()
    for p in procs:
        try:  # idle Ray workers come and go while we look
            conns = p.net_connections(kind="inet")
            listening |= {(p.name(), c.laddr.ip) for c in conns if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            continue
    assert listening
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for _, ip in listening), listening
    url = f"{ray_head.config.dashboard_url}/api/version"
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(url, timeout=5)
    assert exc.value.code == 401
    with urllib.request.urlopen(urllib.request.Request(url, headers=ray_head.auth_headers()), timeout=5) as r:
        assert r.status == 200


@pytest.mark.integration
def test_a_second_head_starts_and_stops_only_its_own_processes(ray_head, tmp_path, guard_dir):
    other = LocalRayHead(RayConfig(num_cpus=1, ports=RayPorts().shifted(2000), auth="disabled"), tmp_path, guard_dir)
    other.start()
    children = psutil.Process(other.proc.pid).children(recursive=True)
    assert children
    ray_files = tmp_path / "ray" / "tmp"
    assert list(ray_files.glob("session_2*/sockets"))  # Ray's files, sockets too, are in the work dir
    other.stop()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []
    links = [p for p in Path("/tmp").glob("vidrip-ray-*") if p.is_symlink() and os.readlink(p) == str(ray_files)]
    assert links == []  # the short link a deep work dir needs for Ray's socket paths is gone with the head
    assert "Draining" not in other.log_path.read_text()  # stopped at once: no node drain (Ray waits up to 30 s)
    assert ray_head.proc.poll() is None  # the session's head is untouched
    assert psutil.Process(ray_head.proc.pid).children(recursive=True)


def test_refuses_to_start_a_head_for_a_remote_address(tmp_path):
    with pytest.raises(ValueError, match="connect to that cluster"):
        LocalRayHead(RayConfig(address="10.1.2.3:6379"), tmp_path)


@pytest.mark.integration
def test_a_head_on_taken_ports_is_refused(ray_head, tmp_path):
    """Readiness must never be answered by another cluster's dashboard."""
    clash = LocalRayHead(RayConfig(ports=ray_head.config.ports), tmp_path)
    with pytest.raises(RuntimeError, match=rf"port\(s\) in use: gcs={ray_head.config.ports.gcs}"):
        clash.start()
    assert clash.proc is None
