"""The model API: a transformer piece by piece (qkv.nn.layers), GPT and BERT-style models built
from them, a KV cache for generation, and parameter accounting."""

from qkv.nn.config import BertConfig, GPTConfig
from qkv.nn.encoder import Encoder
from qkv.nn.gpt import GPT
from qkv.nn.kv_cache import KVCache
from qkv.nn.layers import MLP, AttentionHead, Block, Embedding, LayerNorm, Linear, MultiHeadAttention
from qkv.nn.params import count_parameters

__all__ = ["MLP", "AttentionHead", "BertConfig", "Block", "Embedding", "Encoder", "GPT", "GPTConfig", "KVCache",
           "LayerNorm", "Linear", "MultiHeadAttention", "count_parameters"]
