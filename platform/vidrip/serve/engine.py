"""The model inside one replica: one base model, stage-3 LoRA adapters on it, batched and streamed generation.

Every use of the model (generation, loading and unloading adapters, the health check) runs on one
thread of its own, one job at a time, so the asyncio loop of the replica never blocks and an adapter is
never swapped under a running generation.

A stage-3 adapter is LoRA on the LLM plus the parts stage 3 trained in full (vision tower and projector,
``non_lora_trainables.safetensors``). Adapters are loaded with transformers' PEFT integration and
activated per batch: the LoRA weights by name, the fully trained parts copied in (and the base's own
copied back for a request to the base model). Outputs equal those of the adapter's checkpoint loaded on
its own (tested).

Requests share a batch when they agree on adapter, media shape, sampling and ``response_format``; a seeded
sampled request runs alone, so the same seed gives the same answer whatever else is in flight. Batches
handed in while the model is busy wait together and are merged at the next generation (up to
``batching.max_batch_size``): Serve seals its next batch while the current one still runs. Under steady
load from the same clients, batches would still settle into two halves that take turns (one generating
while the other waits), so a short batch that follows a generation directly waits ``batching.fill_wait_s``
for the returning half.

    engine = Engine(ServeConfig(...))
    replies = engine.generate([GenRequest(...), GenRequest(...)])   # blocking; the deployment calls it off-loop
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vidrip.model.generate import Reply
from vidrip.model.loading import ModelConfig, load_model, load_processor, resolve_checkpoint
from vidrip.serve.config import ServeConfig
from vidrip.serve.media import Media

__all__ = ["Engine", "GenRequest"]

log = logging.getLogger(__name__)
NON_LORA_FILE = "non_lora_trainables.safetensors"
_alone = itertools.count()


@dataclass
class GenRequest:
    """One prompt: chat-template messages (media as ``{"type": "video"}`` parts), its media, sampling."""

    messages: list[dict]
    media: Media | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    adapter: str | None = None  # None: the base model
    grammar: str | None = None  # a JSON schema the reply follows (vidrip.serve.structured); None: free text
    _key: tuple = field(default=(), init=False, repr=False)

    @property
    def sampled(self) -> bool:
        return self.temperature > 0

    def batch_key(self) -> tuple:
        if not self._key:
            alone = next(_alone) if (self.sampled and self.seed is not None) else None
            sampling = (self.temperature, self.top_p) if self.sampled else ()
            media = self.media.signature() if self.media is not None else None
            self._key = (self.adapter, media, sampling, self.grammar, alone)
        return self._key


class Engine:
    """Loads the base model and generates; adapters come and go by name (see module docstring)."""

    def __init__(self, cfg: ServeConfig):
        import torch

        self.cfg = cfg
        if cfg.replicas.torch_threads is not None:
            torch.set_num_threads(cfg.replicas.torch_threads)
        base = resolve_checkpoint(self._base_config(cfg), cfg.tracking_uri)
        if base.checkpoint and (Path(base.checkpoint) / "adapter_config.json").is_file():
            raise ValueError(
                f"model.checkpoint: {cfg.model.checkpoint} is a LoRA adapter; serve its base model as `model` "
                "and the adapter under `adapters` (name: path or models:/ reference)"
            )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidrip-model")
        self.model = self._on_model_thread(load_model, base).result()
        self.processor = load_processor(base)
        self.processor.tokenizer.padding_side = "left"
        self.image_size = self._image_size()
        self._adapters: dict[str, dict] = {}  # name -> the adapter's fully trained tensors
        self._base_values: dict[str, torch.Tensor] = {}  # originals of every tensor an adapter replaced
        self._active: str | None = None
        self._pending: list[tuple[GenRequest, Future]] = []
        self._pending_cv = threading.Condition()
        self._last_done = float("-inf")  # when the last generation ended (monotonic)
        self.batch_sizes: collections.Counter = collections.Counter()  # generations by batch size
        self._grammars = None  # built at the first request with a response_format

    def _base_config(self, cfg: ServeConfig) -> ModelConfig:
        """``cfg.model``; without a checkpoint but with adapters, the base the first adapter was trained on."""
        import json

        if cfg.model.checkpoint is not None or not cfg.adapters:
            return cfg.model
        first = next(iter(cfg.adapters))
        recorded = self.adapter_path(first) / "adapter_config.json"
        if not recorded.is_file():
            raise FileNotFoundError(f"adapters.{first}: {recorded.parent} holds no adapter_config.json")
        return cfg.model.model_copy(update={"checkpoint": json.loads(recorded.read_text())["base_model_name_or_path"]})

    def _image_size(self) -> int:
        size = self.processor.video_processor.size
        return int(size["height"] if isinstance(size, dict) else size.height)

    def _on_model_thread(self, fn, *args, **kwargs) -> Future:
        return self._pool.submit(fn, *args, **kwargs)

    # adapters ------------------------------------------------------------------------------------------
    def adapter_path(self, name: str) -> Path:
        source = self.cfg.adapters.get(name)
        if source is None:
            raise KeyError(name)
        return Path(resolve_checkpoint(ModelConfig(checkpoint=source), self.cfg.tracking_uri).checkpoint)

    def load_adapter(self, name: str) -> None:
        """Load adapter ``name`` (blocking; idempotent)."""
        self._on_model_thread(self._load_adapter, name).result()

    def unload_adapter(self, name: str) -> Future:
        """Drop adapter ``name`` (queued on the model thread, after any generation using it)."""
        return self._on_model_thread(self._unload_adapter, name)

    @property
    def loaded_adapters(self) -> list[str]:
        return list(self._adapters)

    def _load_adapter(self, name: str) -> None:
        from safetensors.torch import load_file

        if name in self._adapters:
            return
        path = self.adapter_path(name)
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapters.{name}: {path} holds no adapter_config.json (not a LoRA checkpoint)")
        full: dict = {}
        if (path / NON_LORA_FILE).is_file():
            full = load_file(str(path / NON_LORA_FILE))
            own = self.model.state_dict()
            unknown = sorted(set(full) - set(own))
            if unknown:
                raise ValueError(f"adapters.{name}: {path / NON_LORA_FILE} has weights the base lacks: {unknown[:5]}")
            for key in full:
                self._base_values.setdefault(key, own[key].detach().clone())
            full = {k: v.to(own[k].dtype) for k, v in full.items()}
        self.model.load_adapter(str(path), adapter_name=name)
        self._adapters[name] = full
        self._active = None  # loading may have changed which adapter is active
        log.info("adapter %s loaded from %s (%d fully trained tensors)", name, path, len(full))

    def _unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            return
        self._activate(None)
        self.model.delete_adapter(name)
        del self._adapters[name]
        log.info("adapter %s unloaded", name)

    def _activate(self, name: str | None) -> None:
        import torch

        if name is not None and name not in self._adapters:
            self._load_adapter(name)
        if name == self._active and name is not None:
            return
        full = self._adapters.get(name, {}) if name is not None else {}
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for key, value in self._base_values.items():
                target = params.get(key)
                if target is not None:
                    target.copy_(full.get(key, value))
        if self._adapters:
            if name is None:
                self.model.disable_adapters()
            else:
                self.model.enable_adapters()
                self.model.set_adapter(name)
        self._active = name

    # generation ----------------------------------------------------------------------------------------
    def _inputs(self, group: list[GenRequest]):
        prompts = [
            self.processor.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False) for r in group
        ]
        videos = [r.media.frames for r in group if r.media is not None and r.media.kind == "video"]
        images = [r.media.image for r in group if r.media is not None and r.media.kind == "image"]
        inputs = self.processor(
            text=prompts, videos=videos or None, images=images or None, padding=True, return_tensors="pt"
        )
        return {k: (v.to(self.model.dtype) if v.is_floating_point() else v) for k, v in inputs.items()}

    def _gen_kwargs(self, head: GenRequest, max_tokens: int) -> dict:
        tok = self.processor.tokenizer
        kwargs = {"max_new_tokens": max_tokens, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
        if head.sampled:
            kwargs.update(do_sample=True, temperature=head.temperature, top_p=head.top_p)
        else:
            kwargs.update(do_sample=False)
        if head.grammar is not None:
            kwargs["logits_processor"] = [self._grammar_processor(head.grammar)]
        return kwargs

    def _grammar_processor(self, schema: str):
        from vidrip.serve.structured import Grammars

        if self._grammars is None:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            self._grammars = Grammars(self.processor.tokenizer, vocab)
        return self._grammars.processor(schema)

    def _seed(self, head: GenRequest) -> None:
        import torch

        if head.seed is not None:
            torch.manual_seed(head.seed)

    def _reply(self, new: list[int], prompt_tokens: int, budget: int) -> Reply:
        eos = self.processor.tokenizer.eos_token_id
        new = new[:budget]
        stopped = eos in new
        if stopped:
            new = new[: new.index(eos)]
        text = self.processor.tokenizer.decode(new, skip_special_tokens=True)
        return Reply(text, prompt_tokens, len(new), "stop" if stopped else "length")

    def _generate_group(self, group: list[GenRequest]) -> list[Reply]:
        import torch

        head = group[0]
        self.batch_sizes[len(group)] += 1
        self._activate(head.adapter)
        inputs = self._inputs(group)
        self._seed(head)
        kwargs = self._gen_kwargs(head, max(r.max_tokens for r in group))
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        width = inputs["input_ids"].shape[1]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return [self._reply(out[i, width:].tolist(), int(prompt_lengths[i]), r.max_tokens) for i, r in enumerate(group)]

    def _generate(self, requests: list[GenRequest]) -> list[Reply | BaseException]:
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.batch_key(), []).append(i)
        results: list[Reply | BaseException] = [RuntimeError("not generated")] * len(requests)
        for idx in groups.values():
            try:
                for i, reply in zip(idx, self._generate_group([requests[i] for i in idx]), strict=True):
                    results[i] = reply
            except Exception as exc:  # one group's failure is its requests' failure, not the batch's
                log.exception("generation failed for a group of %d request(s)", len(idx))
                for i in idx:
                    results[i] = exc
        return results

    def generate(self, requests: list[GenRequest]) -> list[Reply | BaseException]:
        """Replies in request order (an exception in place of a request whose group failed); blocking."""
        return [f.result() for f in self.submit(requests)]

    def submit(self, requests: list[GenRequest]) -> list[Future]:
        """One future per request, resolved with its :class:`Reply` (or the exception of its group)."""
        futures = [Future() for _ in requests]
        with self._pending_cv:
            self._pending.extend(zip(requests, futures, strict=True))
            self._pending_cv.notify_all()
        if requests:
            self._on_model_thread(self._drain)
        return futures

    def _drain(self) -> None:
        """Generate for whatever is pending, up to the batch limit (on the model thread). Under load (the
        previous generation ended moments ago) a short batch first waits up to ``batching.fill_wait_s`` for
        more: the clients of the batch that just finished are on their way back. An idle model never waits."""
        limit, wait = self.cfg.batching.max_batch_size, self.cfg.batching.fill_wait_s
        with self._pending_cv:
            if self._pending and wait > 0 and time.monotonic() - self._last_done < wait:
                self._pending_cv.wait_for(lambda: len(self._pending) >= limit, timeout=wait)
            take = self._pending[:limit]
            del self._pending[: len(take)]
        if not take:
            return
        try:
            results = self._generate([r for r, _ in take])
        except BaseException as exc:  # never leave a caller waiting
            results = [exc] * len(take)
        finally:
            self._last_done = time.monotonic()
        for (_, future), result in zip(take, results, strict=True):
            future.set_result(result)

    def stream(self, request: GenRequest) -> tuple[Iterator[str], Future, threading.Event]:
        """Text pieces as they are generated, a future of the whole :class:`Reply` (for usage), and an event
        that stops the generation early when set (the client went away)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()

        class Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        def run() -> Reply:
            try:
                self._activate(request.adapter)
                inputs = self._inputs([request])
                self._seed(request)
                with torch.inference_mode():
                    out = self.model.generate(
                        **inputs,
                        **self._gen_kwargs(request, request.max_tokens),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([Stop()]),
                    )
                width = inputs["input_ids"].shape[1]
                return self._reply(out[0, width:].tolist(), width, request.max_tokens)
            except BaseException:
                streamer.end()
                raise

        return streamer, self._on_model_thread(run), stop

    def check(self) -> None:
        """Generate one token with the base model; raises when the model cannot generate."""
        reply = self.generate([GenRequest(messages=[{"role": "user", "content": "ok"}], max_tokens=1)])[0]
        if isinstance(reply, BaseException):
            raise RuntimeError(f"the model cannot generate: {reply}") from reply
        if reply.completion_tokens < 1 and reply.finish_reason != "stop":
            raise RuntimeError("the model generated nothing")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
