"""Test-wide setup: 8 simulated CPU devices, offline Hugging Face, float32 matmuls."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  return SHARED


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """After each test module, drop JAX's compiled programs and traces. The suite compiles hundreds of programs
  in one process (models, samplers, the rollout engine, train steps); keeping them all made the process grow
  until an XLA compile late in the run crashed (a segfault in backend_compile_and_load, 2026-12-04), while the
  same test passed in a fresh process. A module rarely reuses another module's programs, so this costs little."""
  yield
  import gc
  jax.clear_caches()
  gc.collect()
