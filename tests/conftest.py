"""Shared fixtures: one small sample corpus, one Ray head on loopback, and the network guard.

The guard records every non-loopback network attempt of this process and of every Python process
started with its environment (the Ray head and its workers, `vidrip ui`); the session fails if any
was recorded. It also fails if any test created or changed anything in Ray's default temp dir
(``/tmp/ray``): every Ray the tests start keeps to a temp dir of its own (see ``ray_tempdir.py``).
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

import ray_tempdir
from vidrip import netguard
from vidrip.runtime import apply_offline_env

apply_offline_env()  # before anything imports ray, transformers or ultralytics
GUARD_DIR = Path(tempfile.mkdtemp(prefix="vidrip-netguard-"))
netguard.install(GUARD_DIR)

REPO = Path(__file__).resolve().parent.parent
# The test head sits beside a demo head (default ports) without clashing; $VIDRIP_TEST_PORT_OFFSET moves it
# further, so that two test sessions can run side by side on one machine.
TEST_PORT_OFFSET = int(os.environ.get("VIDRIP_TEST_PORT_OFFSET", "1000"))
RAY_TEMP = pytest.StashKey[tuple[Path, ray_tempdir.Snapshot]]()


def pytest_sessionstart(session):
    """Snapshot Ray's default temp dir, resolved now: a test may move it (``RAY_TMPDIR``) for a while."""
    root = ray_tempdir.default_ray_temp_dir()
    session.stash[RAY_TEMP] = (root, ray_tempdir.snapshot(root))


def pytest_sessionfinish(session, exitstatus):
    found = netguard.attempts(GUARD_DIR)
    if found:
        print(f"\nnetwork guard: {len(found)} non-loopback attempt(s):")
        for a in found[:20]:
            print(f"  pid {a['pid']} {a['event']} {a['target']} ({' '.join(a['argv'])})\n{a['stack']}")
        session.exitstatus = 1
    root, before = session.stash[RAY_TEMP]
    written = ray_tempdir.changes(before, ray_tempdir.snapshot(root))
    if written:
        print(
            f"\nRay's default temp dir {root} changed during the session (a Ray started without a temp dir of "
            "its own, or another Ray on this machine):"
        )
        for line in written[:20]:
            print(f"  {line}")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def guard_dir() -> Path:
    return GUARD_DIR


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


SMALL_SAMPLE = dict(
    raw_videos=1,
    stage0_images=4,
    stage1_images=4,
    stage2_clips=2,
    stage3_videos=2,
    test_videos=2,
    video_seconds=6.0,
)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    from vidrip.data.sample.build import SampleConfig, build_sample

    out = tmp_path_factory.mktemp("sample")
    build_sample(SampleConfig(out=str(out), **SMALL_SAMPLE))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A Ray head on loopback for the whole session (token auth, network guard in every process)."""
    from vidrip.runtime import LocalRayHead, RayConfig, RayPorts

    workdir = tmp_path_factory.mktemp("ray")
    cfg = RayConfig(num_cpus=2, ports=RayPorts().shifted(TEST_PORT_OFFSET))
    head = LocalRayHead(cfg, workdir, netguard_dir=GUARD_DIR)
    head.start()
    yield head
    head.stop()


@pytest.fixture
def ray_client(ray_head):
    """This process connected to the session head; disconnected afterwards."""
    import ray

    from vidrip.runtime import connect

    connect(ray_head.config, ray_head.workdir)
    yield ray_head
    ray.shutdown()


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store in tmp_path."""
    from vidrip.tracking import TrackingConfig

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    import sys

    return Path(sys.executable).parent


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    return netguard.guard_env(GUARD_DIR, dict(os.environ))


# The fastest detector training that reliably finds tissue, the full-frame and the picture-in-picture
# presenter on the one-video test sample (measured: 0.96-0.995 mAP50 over seeds, 35-60 s on 2 cores).
FAST_DETECTOR = dict(epochs=3, frame_stride=6, batch=4, device="cpu")


@pytest.fixture(scope="session")
def trained_detector(sample_dir, tmp_path_factory):
    """A tissue/person detector trained once per session on the test sample, with what it changed."""
    from types import SimpleNamespace

    import torch

    from vidrip.curate.detector_train import DetectorTrainConfig, train_detector
    from vidrip.tracking import TrackingConfig

    work = tmp_path_factory.mktemp("detector")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    cfg = DetectorTrainConfig(
        sample=str(sample_dir), out=str(work / "out"), tracking=TrackingConfig(uri=uri), **FAST_DETECTOR
    )
    threads = torch.get_num_threads()
    result = train_detector(cfg, work)
    return SimpleNamespace(
        result=result,
        uri=uri,
        epochs=cfg.epochs,
        threads_before=threads,
        threads_after=torch.get_num_threads(),
        deterministic_after=torch.are_deterministic_algorithms_enabled(),
    )


@pytest.fixture(scope="session")
def detector_weights(trained_detector) -> Path:
    return trained_detector.result.weights
