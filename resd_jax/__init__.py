"""resd-jax: Reflection-Enhanced Self-Distillation in JAX/Flax NNX."""

__version__ = "0.1.0"
