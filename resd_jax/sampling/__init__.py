"""Native JAX sampler: batched KV-cache generation with per-token log-probabilities, and its chat front end."""
from resd_jax.sampling.params import SamplingParams
from resd_jax.sampling.sampler import Completions, DecodeState, compile_counts, generate
from resd_jax.sampling.text import Rollout, Sampler, generate_rollouts, generate_text

__all__ = ["SamplingParams", "Completions", "DecodeState", "compile_counts", "generate", "Rollout", "Sampler",
           "generate_rollouts", "generate_text"]
