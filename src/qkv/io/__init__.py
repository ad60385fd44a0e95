"""Checkpoint and tokenizer readers: safetensors only (never pickle), no downloads."""

from qkv.io.checkpoint import find_minilm, read_config, read_safetensors

__all__ = ["find_minilm", "read_config", "read_safetensors"]
