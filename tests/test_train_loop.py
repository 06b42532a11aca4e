"""A training stage for real: Ray Train, 2 CPU workers, HF Trainer with DeepSpeed ZeRO-2 over gloo."""

from pathlib import Path

import pytest
import torch

from vidrip.model.loading import ModelConfig, load_model, load_processor
from vidrip.train.loop import StageRunConfig, fit_stage
from vidrip.train.stages import default_stage


@pytest.mark.integration
def test_stage0_trains_only_the_projector_and_leaves_a_loadable_checkpoint(ray_client, sample_dir, tmp_path):
    spec = default_stage(0).model_copy(update={"global_batch_size": 2})
    cfg = StageRunConfig(
        stage=spec,
        data_root=str(sample_dir),
        output_dir=str(tmp_path),
        run_name="stage0-test",
        num_workers=2,
        max_steps=2,
        save_steps=1,
        deepspeed=str(Path(__file__).resolve().parent.parent / "jobs/configs/deepspeed/zero2.json"),
    )
    result = fit_stage(cfg)
    assert result.global_step == 2
    assert torch.isfinite(torch.tensor(result.metrics["loss"]))

    hf_dir = Path(result.checkpoint) / "checkpoint"
    trained = load_model(ModelConfig(checkpoint=str(hf_dir)))
    processor = load_processor(ModelConfig(checkpoint=str(hf_dir)))
    assert processor.tokenizer.convert_tokens_to_ids("<video>") == 151647
    start = load_model(ModelConfig(preset="tiny"))  # the same seed the workers started from
    moved = {
        name
        for (name, a), b in zip(start.state_dict().items(), trained.state_dict().values(), strict=True)
        if not torch.equal(a, b)
    }
    assert moved and all("multi_modal_projector" in n or n.endswith("image_newline") for n in moved), moved
