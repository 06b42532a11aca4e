"""The memory plan (`vidrip train --dry-run`): counts from the model itself, DeepSpeed's accounting, refusals."""

import pytest

from vidrip import cli
from vidrip.config import load_config
from vidrip.model.loading import ModelConfig
from vidrip.model.presets import PRESETS
from vidrip.train.chain import TrainConfig, run_stages
from vidrip.train.memory import count_parameters, memory_plan
from vidrip.train.stages import LoraSpec, default_stage

ZERO2 = {"zero_optimization": {"stage": 2}}
ZERO3 = {"zero_optimization": {"stage": 3}}


def test_full_training_in_bf16_costs_what_deepspeeds_estimator_says():
    plan = memory_plan(
        ModelConfig(preset="tiny"), default_stage(1), workers=4, use_gpu=True, deepspeed_config=ZERO2, capacity_gib=80
    )
    assert plan.params.trainable == plan.params.total
    states = sum(v for k, v in plan.per_worker_bytes.items() if k != "activations")
    assert states == pytest.approx(plan.deepspeed_estimate_bytes, abs=8)  # rounding of the partitions


def test_lora_stage_counts_the_adapter_and_the_parts_trained_in_full():
    spec = default_stage(3).model_copy(update={"lora": LoraSpec(rank=8)})
    counts = count_parameters(ModelConfig(preset="tiny"), spec)
    text, vision = PRESETS["tiny"].text, PRESETS["tiny"].vision
    h, i, kv = text["hidden_size"], text["intermediate_size"], text["hidden_size"] // text["num_attention_heads"]
    kv_out = kv * text["num_key_value_heads"]
    per_layer = sum(8 * (a + b) for a, b in [(h, h), (h, kv_out), (h, kv_out), (h, h), (h, i), (h, i), (i, h)])
    lora = per_layer * text["num_hidden_layers"]
    full = count_parameters(ModelConfig(preset="tiny"), default_stage(1))  # everything trains
    llm = sum(
        p
        for p in [
            text["vocab_size"] * h,  # embeddings (tied with lm_head: counted once)
            text["num_hidden_layers"] * (2 * h + h * h + 2 * (h * kv_out + kv_out) + h + h * h + 3 * h * i),
            h,  # final norm
        ]
    )
    assert counts.trainable == full.total - llm + lora
    assert counts.total == full.total + lora
    assert counts.vision_trainable and vision["num_hidden_layers"] == 2


def test_zero3_partitions_the_weights_and_zero2_does_not():
    spec = default_stage(1)
    plans = {
        (zero, n): memory_plan(
            ModelConfig(preset="tiny"), spec, workers=n, use_gpu=True, deepspeed_config=ds, capacity_gib=80
        )
        for zero, ds in ((2, ZERO2), (3, ZERO3))
        for n in (2, 8)
    }
    assert plans[2, 2].per_worker_bytes["parameters"] == plans[2, 8].per_worker_bytes["parameters"]
    assert plans[3, 8].per_worker_bytes["parameters"] < plans[3, 2].per_worker_bytes["parameters"]
    assert plans[2, 8].per_worker_bytes["optimizer"] * 4 == pytest.approx(
        plans[2, 2].per_worker_bytes["optimizer"], abs=8
    )


def test_gradient_checkpointing_shrinks_activations_and_more_frames_grow_them():
    def activations(frames, checkpointing):
        spec = default_stage(3)
        spec = spec.model_copy(update={"frames": spec.frames.model_copy(update={"max_frames": frames})})
        plan = memory_plan(
            ModelConfig(preset="ov-7b"),
            spec,
            workers=8,
            use_gpu=True,
            deepspeed_config=ZERO3,
            capacity_gib=80,
            gradient_checkpointing=checkpointing,
        )
        return plan.per_worker_bytes["activations"], plan.sequence_tokens

    (full, tokens), (ckpt, _) = activations(48, False), activations(48, True)
    assert tokens == 48 * 196 + 1 + 512  # one_token layout: 196 a frame, one newline; then the text
    assert activations(32, False)[1] == 729 * 10 + 27 * 3 + 512  # below 38 frames an anyres_max_9 image is longer
    assert ckpt < full / 4
    assert activations(96, True)[0] > ckpt


def test_dry_run_prints_each_stage_and_refuses_what_does_not_fit(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    assert cli.main(["train", "--config", "jobs/configs/train_tiny.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert [f"stage {i}:" in out for i in range(4)] == [True] * 4
    assert "ZeRO-2, fp32" in out and "ZeRO-3, fp32" in out and out.count("  fits") == 4

    # the paper's shape: stage 1 (full fine-tuning of 8B) on one 80 GB GPU cannot fit, on 8 it does
    ov7b = ["--config", "jobs/configs/train_ov7b.yaml", "--dry-run", "--stages", "1"]
    assert cli.main(["train", *ov7b]) == 0
    assert "8 worker(s), ZeRO-3, bf16; 8,030.3M parameters" in capsys.readouterr().out
    assert cli.main(["train", *ov7b, "num_workers=1", "deepspeed.full=zero2"]) == 1
    captured = capsys.readouterr()
    assert "DOES NOT FIT" in captured.out
    assert "memory plan does not fit (stage 1:" in captured.err and "gradient_checkpointing" in captured.err


def test_training_refuses_a_plan_that_does_not_fit_before_starting(repo, tmp_path, tracking):
    cfg = load_config(
        TrainConfig,
        repo / "jobs/configs/train_tiny.yaml",
        [f"workdir={tmp_path}", "device_memory_gib=0.01", "stages=[0]"],
    )
    cfg = cfg.model_copy(update={"tracking": tracking})
    with pytest.raises(ValueError, match=r"memory plan does not fit \(stage 0: .* of 0.0 GiB per worker\)"):
        run_stages(cfg)
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run was opened
