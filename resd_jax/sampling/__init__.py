"""Native JAX sampling: the rollout engine (paged KV cache, continuous batching), the static batch sampler it is
tested against, per-token log-probabilities, and the chat front end."""
from resd_jax.sampling.engine import EngineConfig, generate_paged
from resd_jax.sampling.params import SamplingParams
from resd_jax.sampling.sampler import Completions, DecodeState, compile_counts, generate
from resd_jax.sampling.text import Rollout, Sampler, generate_rollouts, generate_text

__all__ = ["EngineConfig", "generate_paged", "SamplingParams", "Completions", "DecodeState", "compile_counts",
           "generate", "Rollout", "Sampler", "generate_rollouts", "generate_text"]
