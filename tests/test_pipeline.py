"""The pipeline as `make demo` runs it: a Ray head on loopback, `ray job submit` of jobs/pipeline.py, the
steps' MLflow lineage, a failed run resumed, a rerun after an edited YAML that skips what is done and reruns
what changed, and the demo's printout.

One small pipeline (1 raw video, one sweep trial, a few steps per stage) runs end to end once; the
other runs reuse its work directory and MLflow store, as a user's second `make demo` does.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import httpx
import mlflow
import pytest
import yaml

from conftest import FAST_DETECTOR, SMALL_SAMPLE, free_port
from shared_cluster import Watcher, other_app
from vidrip.runtime import RayConfig, RayPorts

pytestmark = pytest.mark.integration

PORT_OFFSET = 2000  # beside a user's demo head (0), the session head (1000) and test_head's (3000)
STEPS = ["sample", "detector", "curate", "train", "sweep", "merge", "serve", "eval"]


def _sweep_yaml(tmp: Path, repo: Path, lr: float) -> Path:
    """The tiny sweep as a YAML file of the test's own (one trial of two steps), so a test can edit it."""
    sweep = yaml.safe_load((repo / "tune_configs/lora_sweep_tiny.yaml").read_text())
    sweep.update(space={"lora.rank": {"grid": [4]}, "lr": {"grid": [lr]}}, max_steps=2, eval_every=1)
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _overrides(tmp: Path, serve_port: int, eval_limit: int = 2) -> list[str]:
    """The tiny pipeline made smaller still: every step runs, each as briefly as it can."""
    fast_detector = [f"{k}={v}" for k, v in FAST_DETECTOR.items() if k != "epochs"] + ["epochs=1"]
    return [
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        f"serve_port={serve_port}",
        *[f"sample.{k}={v}" for k, v in SMALL_SAMPLE.items()],
        f"detector.overrides={json.dumps(fast_detector)}",
        "train.overrides=[max_steps=1, save_steps=1]",
        f"sweep.config={tmp / 'sweep.yaml'}",
        f"eval.overrides=[limit={eval_limit}, models.0.max_tokens=8, models.1.max_tokens=8, judge.max_retries=1]",
    ]


def _demo(
    tmp: Path, overrides: list[str], venv_bin: Path, env: dict, address: str | None = None
) -> subprocess.CompletedProcess:
    """`vidrip demo` as a user runs it (a process of its own, its head on ports of its own, or the running
    cluster at ``address``); the network guard is in its environment, so every process of its head is watched."""
    cfg = {
        "workdir": str(tmp / "work"),
        "pipeline_overrides": overrides,
        "ray": RayConfig(num_cpus=2, ports=RayPorts().shifted(PORT_OFFSET), address=address).model_dump(),
        "max_new_tokens": 4,
    }
    config = tmp / f"demo-{len(list(tmp.glob('demo-*.yaml')))}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [venv_bin / "vidrip", "demo", "--config", str(config)], capture_output=True, text=True, env=env, timeout=1200
    )


def _summary(tmp: Path) -> dict:
    return json.loads((tmp / "work" / "pipeline" / "pipeline-tiny" / "summary.json").read_text())


def _client(tmp: Path) -> mlflow.MlflowClient:
    """The pipeline's store, without setting this process's tracking URI (other tests have their own)."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def first(tmp_path_factory, venv_bin, subprocess_env, repo, guard_dir):
    """A run that fails at curation (its LLM endpoint is down; the demo starts and stops its own head), then
    the same pipeline fixed, on a cluster it shares: a head of the test's own where another team's Serve app
    answers. The fixed run resumes; the other app keeps answering throughout."""
    import ray
    from ray import serve

    from vidrip.runtime import LocalRayHead, connect

    tmp = tmp_path_factory.mktemp("pipeline")
    _sweep_yaml(tmp, repo, lr=0.001)
    port = free_port()
    down = [
        "instruct_llm=null",
        f'curate.overrides=["llm.base_url=http://127.0.0.1:{free_port()}/v1", llm.max_retries=0]',
    ]
    failed = _demo(tmp, _overrides(tmp, port) + down, venv_bin, subprocess_env)
    # room for the other app, and for the endpoint a run keeps up (1.2 CPUs) beside the next run's sweep trial
    cfg = RayConfig(num_cpus=3, ports=RayPorts().shifted(PORT_OFFSET))
    head = LocalRayHead(cfg, tmp / "work", netguard_dir=guard_dir).start()
    try:
        connect(cfg, tmp / "work")
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(other_app(), name="other", route_prefix="/other")
        ray.shutdown()
        watcher = Watcher(f"http://127.0.0.1:{port}/other")
        fixed = _demo(tmp, _overrides(tmp, port), venv_bin, subprocess_env, address=cfg.gcs_address)
        watcher.stop()
        assert fixed.returncode == 0, fixed.stdout[-4000:] + fixed.stderr[-4000:]
        yield SimpleNamespace(
            tmp=tmp, port=port, failed=failed, out=fixed.stdout, summary=_summary(tmp), head=head, watcher=watcher
        )
    finally:
        head.stop()


def test_the_pipeline_leaves_other_applications_on_a_shared_cluster_alone(first):
    """Curation's instruction LLM came and went, the endpoint was deployed and stays; the other team's app
    answered every time it was asked during the run, and still does."""
    import ray
    from ray import serve

    from vidrip.runtime import connect

    assert first.watcher.asked >= 20 and first.watcher.failures == []
    assert httpx.get(f"http://127.0.0.1:{first.port}/other", timeout=10).text == "other"
    connect(first.head.config, first.head.workdir)
    try:
        apps = serve.status().applications
    finally:
        ray.shutdown()
    assert set(apps) == {"other", "vidrip"}  # the instruction LLM (vidrip-instruct) was deleted after curation
    assert first.summary["endpoint"]["url"] == f"http://127.0.0.1:{first.port}"  # the running Serve, reused


def test_a_failed_run_resumes_where_it_stopped(first):
    assert first.failed.returncode != 0
    assert "did not succeed" in first.failed.stderr and "resumes it" in first.failed.stderr
    assert "llm.base_url" in first.failed.stdout + first.failed.stderr  # the job's log names what failed
    status = {s["step"]: s["status"] for s in first.summary["steps"]}
    assert list(status) == STEPS
    assert status["detector"] == "skipped"  # done before curation failed: not trained twice
    assert all(status[s] == "ran" for s in ["curate", "train", "sweep", "merge", "serve", "eval"])
    client = _client(first.tmp)
    parent = client.get_run(first.summary["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["vidrip.resumed"] == "true"  # reopened
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=100
    )
    by_step: dict[str, list] = {}
    for run in children:
        by_step.setdefault(run.data.tags["vidrip.step"], []).append(run.info.status)
    assert sorted(by_step["curate"]) == ["FAILED", "FINISHED"]
    assert by_step["detector"] == ["FINISHED"]


def test_every_step_is_its_own_run_and_the_lineage_reaches_from_data_to_evaluation(first):
    client = _client(first.tmp)
    steps = {s["step"]: s for s in first.summary["steps"]}
    for name, step in steps.items():
        run = client.get_run(step["run_id"])
        assert run.data.tags["vidrip.step"] == name and run.data.tags["mlflow.parentRunId"] == first.summary["run_id"]
        assert run.info.status == "FINISHED"

    def child_of(step: str, experiment: str):
        exp = client.get_experiment_by_name(experiment)
        [run] = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{steps[step]['run_id']}'")
        return run

    curate = child_of("curate", "vidrip-curate")
    curated = steps["curate"]["outputs"]
    assert curated["clip_records"] >= 1 and curated["video_records"] == 1  # the stand-in LLM answered valid JSON
    assert curate.data.metrics["count.instruct.out"] >= 1
    train = child_of("train", "vidrip-train")
    assert curated["out"] in train.data.params["stage_overrides.2.data"]  # curated clips joined stage 2
    assert curated["out"] in train.data.params["stage_overrides.3.data"]  # and curated videos stage 3
    stage_runs = client.search_runs(
        [train.info.experiment_id], f"tags.`mlflow.parentRunId` = '{train.info.run_id}'", max_results=10
    )
    assert sorted(r.data.tags["vidrip.stage"] for r in stage_runs) == ["0", "1", "2", "3"]
    sweep = child_of("sweep", "vidrip-tune")
    stage2 = steps["train"]["outputs"]["stages"]["2"]["checkpoint"]
    assert sweep.data.params["init_from"] == steps["train"]["outputs"]["stages"]["2"]["run_id"]  # named by its id
    assert sweep.data.tags["vidrip.init_checkpoint"] == stage2  # the sweep started from this run's stage 2
    champion = client.get_model_version_by_alias("vidrip-video", "champion")
    assert champion.source == str(Path(steps["sweep"]["outputs"]["best_checkpoint"]).resolve())
    merged = steps["merge"]["outputs"]
    assert (Path(merged["merged"]) / "config.json").is_file() and merged["adapter"] == champion.source
    assert client.get_model_version("vidrip-video-merged", merged["registered_version"]).source == merged["merged"]
    assert steps["serve"]["outputs"]["models"] == ["vidrip-base", "vidrip-video"]
    evaluation = child_of("eval", "vidrip-eval")
    revisions = [v for k, v in evaluation.data.tags.items() if k.endswith(".revision")]
    assert any(champion.source in r for r in revisions) and any(stage2 in r for r in revisions)
    table = Path(steps["eval"]["outputs"]["table_md"]).read_text()
    assert "| stage 2 (image + clip SFT) |" in table and "| stage 3 (video SFT, LoRA) |" in table


def test_the_demo_prints_the_table_an_openai_example_and_the_ui_command(first):
    out = first.out
    assert "| step | status | seconds | MLflow run |" in out and "| curate | ran |" in out
    assert "| Model | Context | Correct | Detail | Avg | Norm-Avg |" in out and "2 items" in out
    example = out.split("the demo just ran this):")[1].split("answer of")[0]
    code = "\n".join(line[4:] for line in example.strip("\n").splitlines())
    compile(code, "example", "exec")  # the printed example is Python
    assert "openai.OpenAI(base_url=" in code and "model='vidrip-video'" in code
    assert "answer of 'vidrip-video' (6 frames," in out  # asked for real: 6 s video, 1 frame per second
    assert f"vidrip ui --workdir {first.tmp / 'work'}" in out and "Research use only" in out


def test_a_rerun_after_an_edited_sweep_yaml_skips_what_is_done_and_reruns_what_changed(
    first, venv_bin, subprocess_env, repo
):
    """`make demo` again after editing the sweep's YAML file (its search space) and the evaluation's size:
    every step before the sweep is reused, the sweep runs anew under a new name and searches the new space
    (the old sweep stays in MLflow), and what follows it runs again."""
    _sweep_yaml(first.tmp, repo, lr=0.002)
    watcher = Watcher(f"http://127.0.0.1:{first.port}/other")
    address = first.head.config.gcs_address
    again = _demo(first.tmp, _overrides(first.tmp, first.port, eval_limit=1), venv_bin, subprocess_env, address)
    assert watcher.stop().failures == []
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = _summary(first.tmp)
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {
        "sample": "ran",  # always checked; the sample itself is not rebuilt
        "detector": "skipped",
        "curate": "skipped",
        "train": "skipped",
        "sweep": "ran",
        "merge": "ran",
        "serve": "ran",
        "eval": "ran",
    }
    assert summary["run_id"] == first.summary["run_id"]  # the same pipeline run, reopened
    before = {s["step"]: s for s in first.summary["steps"]}
    after = {s["step"]: s for s in summary["steps"]}
    assert all(after[k]["outputs"] == before[k]["outputs"] for k, v in status.items() if v == "skipped")
    assert after["sweep"]["key"] != before["sweep"]["key"]
    client = _client(first.tmp)
    sweeps = {step["key"]: client.get_run(step["outputs"]["run_id"]) for step in (before["sweep"], after["sweep"])}
    new, old = sweeps[after["sweep"]["key"]], sweeps[before["sweep"]["key"]]
    assert new.info.run_id != old.info.run_id and old.info.status == new.info.status == "FINISHED"
    assert json.loads(new.data.params["space.lr.grid"]) == [0.002] and json.loads(old.data.params["space.lr.grid"]) == [
        0.001
    ]
    assert new.info.run_name == f"pipeline-tiny-sweep-{after['sweep']['key'][:8]}"
    trials = client.search_runs([new.info.experiment_id], f"tags.`mlflow.parentRunId` = '{new.info.run_id}'")
    assert [float(t.data.params["lr"]) for t in trials] == [0.002]  # the new sweep searched the new space
    assert "| train | skipped |" in again.stdout and "1 items" in again.stdout


def test_a_step_is_keyed_and_named_by_its_resolved_config_not_its_file(tmp_path, repo):
    """The training config's content decides the train step's key and run name: the same YAML elsewhere is the
    same run; the YAML file edited is a new run (the old one is left as it was)."""
    from vidrip.config import load_config
    from vidrip.pipeline import steps
    from vidrip.pipeline.config import PipelineConfig
    from vidrip.pipeline.run import keyed_config, step_key

    copy = tmp_path / "train.yaml"
    copy.write_text((repo / "jobs/configs/train_tiny.yaml").read_text())

    def train(path: Path):
        cfg = load_config(PipelineConfig, repo / "jobs/configs/pipeline_tiny.yaml", [f"train.config={path}"])
        build = lambda name: steps.train_config(cfg, "/sample", "/curated", name)  # noqa: E731
        config, inputs = keyed_config("train", build, {"sample_fingerprint": "f"}, "run_name", cfg.name)
        return config.run_name, step_key("train", inputs)

    shipped, copied = train(repo / "jobs/configs/train_tiny.yaml"), train(copy)
    assert shipped == copied and shipped[0] == f"pipeline-tiny-train-{shipped[1][:8]}"
    copy.write_text(copy.read_text().replace("max_steps: 4", "max_steps: 3"))
    edited = train(copy)
    assert edited[0] != shipped[0] and edited[1] != shipped[1]
    assert edited[0] == f"pipeline-tiny-train-{edited[1][:8]}"
