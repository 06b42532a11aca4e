"""Multi-node placement on one machine: a Ray cluster of a head (no CPUs for work, as on a real cluster), a
CPU-only node and a node advertising a GPU (`ray.cluster_utils.Cluster`, every node on 127.0.0.1). The
curation pipeline's model steps (transcription, detection, OCR) ask for a GPU share and run on the GPU
node; its decode steps (shots, keyframes) ask for none and run on the CPU node; each step records the
node it ran on in the input's part file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.integration

MODEL_STEPS = ("probe", "transcribe", "detect", "text", "trim", "clips")  # the two GPU-share operators
DECODE_STEPS = ("shots", "keyframes")


@pytest.fixture
def ray_temp(monkeypatch) -> Iterator[Path]:
    """The nodes' temp dir, in a short folder of our own that is Ray's default temp dir for the test; removed after.

    Ray's socket paths must stay under 107 bytes, so tmp_path is too deep. `Cluster` writes its address file into
    Ray's default temp dir whatever temp_dir the nodes get (`write_ray_address(gcs_address)` in
    ray/cluster_utils.py); $RAY_TMPDIR moves that default (`get_default_system_temp_dir` in ray/_common/utils.py)
    to `<folder>/ray`, the nodes' own temp dir, instead of /tmp/ray.
    """
    folder = Path(tempfile.mkdtemp(prefix="vidrip-mn-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    yield folder / "ray"
    shutil.rmtree(folder)


@pytest.fixture
def cluster(tmp_path, guard_dir, ray_temp, monkeypatch):
    """Three nodes on loopback, without auth (a test cluster), every process under the network guard."""
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    from vidrip import netguard
    from vidrip.runtime import RayConfig, connect, ensure_ray_bootstrap_config

    ensure_ray_bootstrap_config()  # as LocalRayHead.start does: else the head's dashboard probes cloud metadata
    for key, value in netguard.guard_env(guard_dir, dict(os.environ)).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # Ray's multi-node mode off: every process keeps 127.0.0.1 instead of the host's outward address
    monkeypatch.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    node = {"node_ip_address": "127.0.0.1", "temp_dir": str(ray_temp), "object_store_memory": 200 * 1024**2}
    head = {
        "num_cpus": 0,  # as on a real cluster, the head schedules no work
        "include_dashboard": False,
        **{p: free_port() for p in ("gcs_server_port", "dashboard_agent_listen_port", "metrics_export_port")},
        **{p: free_port() for p in ("runtime_env_agent_port", "ray_client_server_port")},
    }
    c = Cluster(initialize_head=True, head_node_args={**node, **head})
    try:
        cpu = c.add_node(**node, num_cpus=2)
        gpu = c.add_node(**node, num_cpus=2, num_gpus=1)
        connect(RayConfig(address=c.address, auth="disabled"), tmp_path)
        assert ray.cluster_resources().get("GPU") == 1
        yield c, cpu.node_id, gpu.node_id
    finally:
        ray.shutdown()
        c.shutdown()


def test_model_steps_run_on_the_gpu_node_and_decoding_on_the_cpu_node(cluster, sample_dir, detector_weights, tmp_path):
    from vidrip.config import load_config
    from vidrip.curate.pipeline import CurateConfig, run_curation
    from vidrip.tracking import TrackingConfig

    _, cpu_node, gpu_node = cluster
    cfg = load_config(
        CurateConfig,
        None,
        [
            f"inputs=[{sample_dir / 'raw'}]",
            f"out={tmp_path / 'curated'}",
            f"workdir={tmp_path}",
            f"detect.weights={detector_weights}",
            "instructions=false",
        ],
    ).model_copy(update={"tracking": TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")})
    result = run_curation(cfg, progress=False)
    assert result.counts["clips"] >= 1
    [part] = [json.loads(p.read_text()) for p in (tmp_path / "curated" / "parts").glob("*.json")]
    nodes = part["nodes"]
    assert set(nodes) == set(MODEL_STEPS + DECODE_STEPS)
    for step in MODEL_STEPS:
        assert nodes[step] == [gpu_node], (step, nodes)
    for step in DECODE_STEPS:
        assert nodes[step] == [cpu_node], (step, nodes)
