"""Stages as data, and exactly what trains in each: LoRA means LoRA."""

import pytest
import torch

from vidrip.data.mixture import DataSource
from vidrip.model.loading import ModelConfig, load_model
from vidrip.train.stages import LoraSpec, StageSpec, default_stage, default_stages
from vidrip.train.trainable import apply_trainable, param_groups, part_of, trainable_summary


@pytest.fixture
def tiny():
    return load_model(ModelConfig(preset="tiny"))


def test_defaults_follow_the_released_scripts():
    s = default_stages()
    assert (s[0].vision_tower, s[0].projector, s[0].llm, s[0].lr) == ("frozen", "full", "frozen", 1e-3)
    for i in (1, 2):
        assert (s[i].vision_tower, s[i].projector, s[i].llm) == ("full", "full", "full")
        assert (s[i].lr, s[i].effective_vision_lr) == (1e-5, 2e-6)
    assert (s[3].llm, s[3].lora.rank, s[3].lora.effective_alpha, s[3].lora.dropout) == ("lora", 128, 256.0, 0.05)
    assert s[3].frames.max_frames == 32 and s[3].frames.fps == 1
    assert [s[i].init_from for i in range(4)] == ["base", 0, 1, 2]
    assert s[1].global_batch_size == 8 and s[3].global_batch_size == 32
    assert all(
        x.scheduler == "cosine" and x.warmup_ratio == 0.03 and x.epochs == 1 and x.weight_decay == 0 for x in s.values()
    )
    assert {d.file for d in s[2].data} == {"stage1_image_sft.json", "stage2_clip_sft.json"}


def test_inconsistent_specs_are_refused():
    base = default_stage(1).model_dump()
    with pytest.raises(ValueError, match="needs a 'lora' section"):
        StageSpec.model_validate({**base, "llm": "lora"})
    with pytest.raises(ValueError, match="no part of the model is 'lora'"):
        StageSpec.model_validate({**base, "lora": LoraSpec().model_dump()})
    with pytest.raises(ValueError, match="cannot start from stage 1"):
        StageSpec.model_validate({**base, "init_from": 1})
    with pytest.raises(ValueError, match="nothing trains"):
        StageSpec.model_validate({**base, "vision_tower": "frozen", "projector": "frozen", "llm": "frozen"})
    with pytest.raises(ValueError, match="needs an 'amount'"):
        DataSource(file="x.json", sampling="random_n")
    with pytest.raises(ValueError, match="percentage"):
        DataSource(file="x.json", sampling="first_pct", amount=150)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        StageSpec.model_validate({**base, "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter"})


@pytest.mark.parametrize(
    "index, expected",
    [
        (0, {"vision_tower": False, "projector": True, "llm": False}),
        (1, {"vision_tower": True, "projector": True, "llm": True}),
        (2, {"vision_tower": True, "projector": True, "llm": True}),
        (3, {"vision_tower": True, "projector": True, "llm": False}),
    ],
)
def test_what_trains_in_each_stage(tiny, index, expected):
    model = apply_trainable(tiny, default_stage(index))
    summary = trainable_summary(model)
    for part, trains in expected.items():
        s = summary[part]
        assert s["base_trainable"] == (s["base_total"] if trains else 0), (part, s)
    assert summary["llm"]["lora"] > 0 if index == 3 else summary["llm"]["lora"] == 0
    assert summary["vision_tower"]["lora"] == 0  # SigLIP's q/k/v_proj are never LoRA'd by an LLM LoRA


def test_lora_means_lora_llm_base_weights_do_not_move(tiny):
    spec = default_stage(3).model_copy(update={"lr": 1e-2, "vision_lr": 1e-2, "lora": LoraSpec(rank=4)})
    model = apply_trainable(tiny, spec)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([[151644, 872, 198, 9707, 151645]])
    pixel = torch.randn(1, 2, 3, 64, 64)
    inputs = {"input_ids": torch.cat([ids[:, :3], torch.full((1, 9), 151647), ids[:, 3:]], dim=1)}
    inputs["pixel_values_videos"] = pixel
    opt = torch.optim.SGD(param_groups(model, spec))
    model.train()
    for _ in range(3):
        # LoRA's B starts at zero: several steps so that A gets gradients too
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(".lora_A." in n for n in moved) and any(".lora_B." in n for n in moved)
    assert any(part_of(n) == "projector" for n in moved) and any(part_of(n) == "vision_tower" for n in moved)
    assert not [n for n in moved if part_of(n) == "llm" and ".lora_" not in n]


def test_full_and_lora_is_the_explicit_other_mode(tiny):
    spec = default_stage(3).model_copy(update={"llm": "full_and_lora"})
    summary = trainable_summary(apply_trainable(tiny, spec))
    assert summary["llm"]["base_trainable"] == summary["llm"]["base_total"] and summary["llm"]["lora"] > 0


def test_vision_tower_lora(tiny):
    spec = StageSpec.model_validate({**default_stage(3).model_dump(), "vision_tower": "lora", "llm": "frozen"})
    summary = trainable_summary(apply_trainable(tiny, spec))
    assert summary["vision_tower"]["lora"] > 0 and summary["vision_tower"]["base_trainable"] == 0
    assert summary["llm"]["lora"] == 0 and summary["llm"]["base_trainable"] == 0


def test_param_groups_put_the_vision_tower_at_its_own_rate(tiny):
    spec = default_stage(1)
    model = apply_trainable(tiny, spec)
    groups = param_groups(model, spec)
    assert sorted(g["lr"] for g in groups) == [2e-6, 1e-5]
    vision = next(g for g in groups if g["lr"] == 2e-6)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {part_of(names[id(p)]) for p in vision["params"]} == {"vision_tower"}
