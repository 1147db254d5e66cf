"""Decoder-only language models in Flax NNX and their weight I/O."""
from resd_jax.models.config import PRESETS, ModelConfig
from resd_jax.models.kv_cache import KVCache
from resd_jax.models.transformer import Transformer, param_axes

__all__ = ["ModelConfig", "PRESETS", "Transformer", "KVCache", "param_axes"]
