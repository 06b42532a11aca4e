"""Structured output: OpenAI's ``response_format``, enforced token by token with xgrammar while generating.

    {"response_format": {"type": "json_object"}}
    {"response_format": {"type": "json_schema",
                         "json_schema": {"name": "score", "schema": {"type": "object", ...}, "strict": true}}}

``text`` (the default) generates freely. ``json_object`` and ``json_schema`` compile a grammar (xgrammar,
as vLLM and SGLang do) that masks every token which would leave the JSON, so even the tiny preset's random
weights answer with JSON that parses and validates (whitespace between tokens is not free: a model that
only emits newlines would never finish). A schema xgrammar cannot compile is refused with HTTP 400 naming
``response_format.json_schema.schema``, before the request reaches a replica.

    grammar = grammar_of(req.response_format)           # canonical schema text, or None
    grammars = Grammars(tokenizer, vocab_size)           # per replica: compiled grammars are cached
    model.generate(..., logits_processor=[grammars.processor(grammar)])
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from vidrip.serve.protocol import APIError, ResponseFormat

__all__ = ["Grammars", "grammar_of"]

JSON_OBJECT = json.dumps({"type": "object"})
_SOURCE_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")


@lru_cache(maxsize=256)
def _check(schema: str) -> None:
    import xgrammar as xgr

    xgr.Grammar.from_json_schema(schema, any_whitespace=False)


def grammar_of(fmt: ResponseFormat | None) -> str | None:
    """The JSON schema (canonical text) a reply must follow, or None for free text; APIError 400 if unusable."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return JSON_OBJECT
    param = "response_format.json_schema"
    if fmt.json_schema is None:
        raise APIError(400, f"{param}: required when response_format.type is 'json_schema'", param=param)
    schema = json.dumps(fmt.json_schema.json_schema, sort_keys=True)
    try:
        _check(schema)
    except Exception as exc:  # xgrammar raises RuntimeError/ValueError with the reason
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = _SOURCE_PREFIX.sub("", text)  # xgrammar's "[time] file.cc:line: " before the reason
        raise APIError(400, f"{param}.schema: cannot be enforced: {reason}", param=f"{param}.schema") from None
    return schema


class Grammars:
    """Compiled grammars for one tokenizer (compiled once per schema), and a fresh logits processor per
    generation (xgrammar's processor keeps the matchers of the batch it serves)."""

    def __init__(self, tokenizer, vocab_size: int):
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=[tokenizer.eos_token_id]
        )
        self._compiler = xgr.GrammarCompiler(info)

    def processor(self, schema: str):
        import xgrammar as xgr

        compiled = self._compiler.compile_json_schema(schema, any_whitespace=False)  # xgrammar caches by schema
        return xgr.contrib.hf.LogitsProcessor(compiled)
