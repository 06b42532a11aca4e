"""Answer a question about a video (or an image) with a LLaVA-OneVision model: greedy or sampled, seeded.

frames = read_frames("case.mp4", FramePolicy(rule="fps"), size=preset.image_size).array
reply = answer(model, processor, question="What is shown?", frames=frames, max_new_tokens=64)
reply.text, reply.prompt_tokens, reply.completion_tokens
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Reply", "answer"]


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length"


def answer(
    model,
    processor,
    question: str,
    frames: np.ndarray | None = None,
    image=None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> Reply:
    import torch

    parts: list[dict] = []
    if frames is not None:
        parts.append({"type": "video"})
    if image is not None:
        parts.append({"type": "image"})
    parts.append({"type": "text", "text": question})
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": parts}], add_generation_prompt=True, tokenize=False
    )
    inputs = processor(
        text=prompt,
        videos=[frames] if frames is not None else None,
        images=[image] if image is not None else None,
        return_tensors="pt",
    )
    inputs = {k: (v.to(model.dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
    eos = processor.tokenizer.eos_token_id
    gen = {"max_new_tokens": max_new_tokens, "eos_token_id": eos, "pad_token_id": processor.tokenizer.pad_token_id}
    if temperature > 0:
        gen.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        gen.update(do_sample=False)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**inputs, **gen)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    finish = "stop" if eos in new else "length"
    if eos in new:
        new = new[: new.index(eos)]
    text = processor.tokenizer.decode(new, skip_special_tokens=True)
    return Reply(
        text=text, prompt_tokens=int(inputs["input_ids"].shape[1]), completion_tokens=len(new), finish_reason=finish
    )
