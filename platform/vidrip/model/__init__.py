"""LLaVA-OneVision models: presets, the Qwen2 tokenizer, processor and chat template, collator, loading."""
