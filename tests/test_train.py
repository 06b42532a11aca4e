"""Training for real: stages chained through MLflow on Ray Train (2 CPU workers, DeepSpeed over gloo)."""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
import torch

from vidrip.config import ConfigError, load_config
from vidrip.model.loading import ModelConfig, load_model, load_processor
from vidrip.tracking import InputError, Lineage
from vidrip.train.chain import CHECKPOINT_TAG, STAGE_TAG, TrainConfig, run_stages
from vidrip.train.loop import StageRunConfig, fit_stage, read_events
from vidrip.train.stages import default_stage


def test_stage_overrides_merge_onto_the_papers_defaults(repo):
    cfg = load_config(TrainConfig, repo / "jobs/configs/train_tiny.yaml", ["stage_overrides.3.lora.dropout=0.1"])
    spec = cfg.spec(3)
    assert (spec.lora.rank, spec.lora.dropout, spec.global_batch_size, spec.lr) == (8, 0.1, 4, 1e-5)
    assert cfg.spec(2).vision_lr == 2e-6  # untouched defaults stay


def test_bad_stage_override_names_the_key(repo):
    with pytest.raises(ConfigError, match=r"stage_overrides\.1: 'lrr': Extra inputs are not permitted"):
        load_config(TrainConfig, repo / "jobs/configs/train_tiny.yaml", ["stage_overrides.1.lrr=1e-5"])
    with pytest.raises(ConfigError, match="no stage 7"):
        load_config(TrainConfig, repo / "jobs/configs/train_tiny.yaml", ["stages=[0,7]"])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.integration
def test_stages_0_and_1_chain_through_mlflow(ray_client, sample_dir, tmp_path, tracking, repo):
    cfg = load_config(
        TrainConfig,
        repo / "jobs/configs/train_tiny.yaml",
        [f"workdir={tmp_path}", f"data_root={sample_dir}", "stages=[0,1]", "max_steps=2", "save_steps=1"],
    )
    cfg = cfg.model_copy(update={"tracking": tracking})
    s0, s1 = run_stages(cfg)
    assert (s0.global_step, s1.global_step) == (2, 2)
    assert s0.init_run_id is None and s1.init_run_id == s0.run_id

    start = _state(load_model(ModelConfig(preset="tiny")))
    after0 = _state(load_model(ModelConfig(checkpoint=s0.checkpoint)))
    after1 = _state(load_model(ModelConfig(checkpoint=s1.checkpoint)))
    moved0 = {k for k in start if not torch.equal(start[k], after0[k])}
    assert moved0 and all("multi_modal_projector" in k or k.endswith("image_newline") for k in moved0)
    moved1 = {k for k in start if not torch.equal(after0[k], after1[k])}
    assert any("language_model" in k for k in moved1) and any("vision_tower" in k for k in moved1)
    assert load_processor(ModelConfig(checkpoint=s1.checkpoint)).tokenizer.eos_token == "<|im_end|>"

    lineage = Lineage(tracking, tmp_path)
    client = lineage.client
    runs = {o.stage: client.get_run(o.run_id) for o in (s0, s1)}
    parent = runs[0].data.tags["mlflow.parentRunId"]
    assert runs[1].data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).info.status == "FINISHED"
    assert runs[1].data.tags["vidrip.init_from_run"] == s0.run_id
    assert runs[0].data.tags[STAGE_TAG] == "0" and runs[0].data.tags[CHECKPOINT_TAG] == s0.checkpoint
    assert [m.step for m in client.get_metric_history(s1.run_id, "loss")] == [1, 2]
    assert runs[1].data.params["stage.lr"] == "1e-05"
    assert [r.info.run_id for r in lineage.find_runs("train", {STAGE_TAG: "1"}, parent=parent)] == [s1.run_id]
    versions = client.search_model_versions("name = 'vidrip-video'")
    assert [(v.run_id, v.source, v.tags[STAGE_TAG]) for v in versions] == [(s1.run_id, s1.checkpoint, "1")]


def test_a_stage_without_its_predecessor_names_its_start_or_is_refused(tmp_path, tracking, sample_dir):
    """`stages=[2]` starts from what ``init_from`` names; without it the candidates are listed, not guessed."""
    lineage = Lineage(tracking, tmp_path)
    with lineage.run("train", ModelConfig(), run_name="stage1-image_sft", tags={STAGE_TAG: "1"}) as stage1:
        stage1.set_tag(CHECKPOINT_TAG, str(tmp_path))
    cfg = TrainConfig(workdir=str(tmp_path), data_root=str(sample_dir), stages=[2], tracking=tracking)
    with pytest.raises(InputError, match="init_from: not set") as refused:
        run_stages(cfg)
    assert f"{stage1.run_id}  stage1-image_sft" in str(refused.value)
    assert len(lineage.find_runs("train", status=None)) == 1  # refused before a run was started
    with pytest.raises(InputError, match=f"init_from: no MLflow run {'f' * 32}"):
        run_stages(cfg.model_copy(update={"init_from": "f" * 32}))


@pytest.mark.integration
def test_stage3_lora_under_zero3_then_merge(ray_client, sample_dir, tmp_path, repo, venv_bin, subprocess_env):
    """Stage 3 from a stage-2-like checkpoint: ZeRO-3, LoRA on the LLM, vision tower and projector in full."""
    from vidrip.model.loading import save_model
    from vidrip.train.loop import NON_LORA_FILE, fit_stage
    from vidrip.train.stages import LoraSpec

    init = ModelConfig(preset="tiny", seed=5)
    save_model(load_model(init), load_processor(init), tmp_path / "stage2")
    fast = {"lr": 5e-3, "vision_lr": 5e-3, "lora": LoraSpec(rank=4)}
    result = fit_stage(
        _stage_run(
            3,
            sample_dir,
            tmp_path,
            repo,
            fast,
            model=ModelConfig(checkpoint=str(tmp_path / "stage2")),
            run_name="stage3-test",
            max_steps=3,
            save_steps=3,
            deepspeed="zero3",
        )
    )
    hf_dir = Path(result.checkpoint) / "checkpoint"
    assert result.global_step == 3
    assert (hf_dir / "adapter_config.json").is_file() and (hf_dir / NON_LORA_FILE).is_file()

    trained = load_model(ModelConfig(checkpoint=str(hf_dir)))
    before = _state(load_model(ModelConfig(checkpoint=str(tmp_path / "stage2"))))
    base = {k.removeprefix("base_model.model."): v for k, v in trained.state_dict().items() if ".lora_" not in k}
    base = {k.replace(".base_layer.", "."): v for k, v in base.items()}
    moved = {k for k in before if not torch.equal(before[k], base[k])}
    assert any("vision_tower" in k for k in moved) and any("multi_modal_projector" in k for k in moved)
    assert not [k for k in moved if "language_model" in k or k.startswith("lm_head")]  # LoRA means LoRA
    lora_b = [v for k, v in trained.state_dict().items() if ".lora_B." in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # the adapter learned something

    # merge: a standalone checkpoint whose outputs match the adapter model's
    out = subprocess.run(
        [venv_bin / "vidrip", "merge", "--checkpoint", str(hf_dir), "--out", str(tmp_path / "merged")],
        capture_output=True,
        text=True,
        env=subprocess_env,
    )
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = load_model(ModelConfig(checkpoint=str(tmp_path / "merged")))
    processor = load_processor(ModelConfig(checkpoint=str(tmp_path / "merged")))
    frames = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    inputs = processor(
        text="<|im_start|>user\n<video>\nWhat is shown?<|im_end|>\n", videos=[frames], return_tensors="pt"
    )
    with torch.no_grad():
        a, b = trained(**inputs).logits, merged(**inputs).logits
    assert not torch.equal(a, load_model(ModelConfig(checkpoint=str(tmp_path / "stage2")))(**inputs).logits)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _kill_a_worker_after_first_checkpoint(run_dir: Path, killed: list[int]) -> threading.Thread:
    """A thread that waits until Ray Train has registered the run's first checkpoint (it is in the checkpoint
    manager's snapshot, not only on disk), then SIGKILLs one training worker."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"

    def registered() -> bool:
        try:
            return bool(json.loads(snapshot.read_text())["checkpoint_results"])
        except (OSError, ValueError, KeyError):  # not written yet, or being written
            return False

    def kill():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not registered():
            time.sleep(0.2)
        workers = [
            p
            for p in psutil.process_iter(["pid", "cmdline"])
            if any("RayTrainWorker" in part for part in p.info["cmdline"] or [])
        ]
        if workers:
            os.kill(workers[0].info["pid"], signal.SIGKILL)
            killed.append(workers[0].info["pid"])

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def _stage_run(index, sample_dir, tmp_path, repo, spec_update=None, **update) -> StageRunConfig:
    """Stage ``index`` on the sample with a global batch of 2, 2 workers, ZeRO-2."""
    spec = default_stage(index).model_copy(update={"global_batch_size": 2, **(spec_update or {})})
    fields = dict(
        stage=spec,
        data_root=str(sample_dir),
        output_dir=str(tmp_path / "out"),
        run_name="kill-test",
        max_steps=8,
        save_steps=2,
        deepspeed="zero2",
    )
    return StageRunConfig(**{**fields, **update})


def _logged_steps(checkpoint: str) -> list[int]:
    state = json.loads((Path(checkpoint) / "checkpoint" / "trainer_state.json").read_text())
    return [e["step"] for e in state["log_history"] if "loss" in e]


@pytest.mark.integration
def test_a_killed_worker_is_replaced_and_the_stage_resumes_from_its_checkpoint(ray_client, sample_dir, tmp_path, repo):
    cfg = _stage_run(0, sample_dir, tmp_path, repo, max_failures=1)
    killed: list[int] = []
    killer = _kill_a_worker_after_first_checkpoint(cfg.storage_path / cfg.run_name, killed)
    result = fit_stage(cfg)
    killer.join()
    assert killed, "no training worker was found to kill"
    assert result.global_step == 8
    events = read_events(cfg.output_dir)
    assert [e["event"] for e in events] == ["start", "resume"]
    assert events[1]["step"] in (2, 4, 6)  # from a saved checkpoint, not from scratch
    assert _logged_steps(result.checkpoint) == list(range(1, 9))  # every step once, none repeated or lost


@pytest.mark.integration
def test_a_crashed_training_run_resumes_when_rerun_with_its_name(ray_client, sample_dir, tmp_path, tracking, repo):
    cfg = TrainConfig(
        workdir=str(tmp_path),
        data_root=str(sample_dir),
        stages=[0],
        run_name="crash-test",
        max_steps=8,
        save_steps=2,
        max_failures=0,
        stage_overrides={0: {"global_batch_size": 2}},
        tracking=tracking,
    )
    killed: list[int] = []
    run_dir = tmp_path / "train" / "crash-test" / "stage0" / "ray_results" / "crash-test-stage0"
    killer = _kill_a_worker_after_first_checkpoint(run_dir, killed)
    with pytest.raises(Exception):  # noqa: B017  the stage fails: no retries were allowed
        run_stages(cfg)
    killer.join()
    assert killed

    (outcome,) = run_stages(cfg)  # the same name: resume
    assert outcome.global_step == 8 and outcome.trained
    assert _logged_steps(str(Path(outcome.checkpoint).parent)) == list(range(1, 9))

    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    stage_runs = client.search_runs(
        [client.get_run(outcome.run_id).info.experiment_id], filter_string=f"tags.`{STAGE_TAG}` = '0'"
    )
    assert sorted(r.info.status for r in stage_runs) == ["FAILED", "FINISHED"]
    parents = {r.data.tags["mlflow.parentRunId"] for r in stage_runs}
    assert len(parents) == 1 and client.get_run(parents.pop()).info.status == "FINISHED"
    resumed = client.get_run(outcome.run_id).data.tags["vidrip.resumed_from_steps"]
    assert int(resumed) in (2, 4, 6)

    (again,) = run_stages(cfg)  # a finished run: nothing to train, the stage is kept
    assert (again.run_id, again.trained, again.global_step) == (outcome.run_id, False, 8)
    changed = cfg.model_copy(update={"save_steps": 4})
    with pytest.raises(ValueError, match="stage 0 was started with a different configuration"):
        run_stages(changed)


@pytest.mark.integration
def test_the_loss_falls_over_a_stage(ray_client, sample_dir, tmp_path, repo):
    """Stage 1 (everything trains) for 12 steps on the sample's image instructions, 2 workers, ZeRO-2,
    gradient checkpointing on."""
    fast = {"lr": 1e-3, "vision_lr": 1e-3}
    result = fit_stage(
        _stage_run(
            1,
            sample_dir,
            tmp_path,
            repo,
            fast,
            run_name="loss-falls",
            max_steps=12,
            save_steps=12,
            gradient_checkpointing=True,
        )
    )
    state = json.loads((Path(result.checkpoint) / "checkpoint" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 12
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    # step-to-step noise here is about 0.1 nats: the fall must be well beyond it
    assert last < first - 0.3 and max(losses[-3:]) < min(losses[:3]), f"loss did not fall: {losses}"
    throughput = [e for e in state["log_history"] if "tokens_per_second" in e]
    assert len(throughput) == 11 and all(e["samples_per_second"] > 0 for e in throughput)  # from the second step
