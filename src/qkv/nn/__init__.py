"""The model API: a transformer piece by piece (qkv.nn.layers), GPT and BERT-style models built
from them, a KV cache for generation, parameter accounting, and hook points with an activation
cache for looking inside (qkv.nn.hooks)."""

from qkv.nn.config import BertConfig, GPTConfig, LlamaConfig
from qkv.nn.encoder import Encoder
from qkv.nn.gpt import GPT
from qkv.nn.hooks import ActivationCache, hook_names
from qkv.nn.kv_cache import KVCache
from qkv.nn.layers import MLP, AttentionHead, Block, Embedding, LayerNorm, Linear, MultiHeadAttention, RMSNorm
from qkv.nn.llama import Llama
from qkv.nn.params import count_parameters

__all__ = ["MLP", "ActivationCache", "AttentionHead", "BertConfig", "Block", "Embedding", "Encoder", "GPT",
           "GPTConfig", "KVCache", "LayerNorm", "Linear", "Llama", "LlamaConfig", "MultiHeadAttention", "RMSNorm",
           "count_parameters", "hook_names"]
