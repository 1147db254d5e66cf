"""`RoleConfig`: how one context role (reflector, tagger, curator) is played and sampled, validated at
construction with one-line errors. `describe()` is what the run records about the role: never a secret."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import urllib.parse
from typing import Any

ROLES = ("reflector", "tagger", "curator")
PHASE_OF_ROLE = {"reflector": "reflect", "tagger": "tag", "curator": "curate"}
BACKENDS = ("policy", "local", "endpoint")
LOCAL_SOURCES = ("hf", "gguf", "embedded", "preset")  # preset: random weights of a named preset (tests)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class RoleConfig:
  """One role's binding and sampling.

  backend: policy (the trained model writes, as in the paper) | local (a second, frozen model loaded once) |
    endpoint (an OpenAI-compatible `POST {base_url}/chat/completions`).
  model_source / model_path: local only. hf: a model directory; gguf: a file; embedded: SmolLM2-135M (no
    path); preset: model_path names a `ModelConfig` preset (random weights, for tests).
  base_url / model / api_key_env: endpoint only; the key is read from the environment variable named by
    api_key_env at each call and never stored.
  timeout_s / max_retries / max_concurrency: endpoint only; per request, retries after a timeout, a
    connection error, HTTP 429 or 5xx (exponential backoff), parallel requests.
  temperature / top_p / max_new_tokens (0 = rollout.max_response_len) / enable_thinking (None = the model's
    default; for the policy backend, model.enable_thinking).
  """
  name: str
  backend: str = "policy"
  model_source: str = ""
  model_path: str = ""
  base_url: str = ""
  model: str = ""
  api_key_env: str = ""
  timeout_s: float = 120.0
  max_retries: int = 2
  max_concurrency: int = 8
  temperature: float = 1.0
  top_p: float = 0.95
  max_new_tokens: int = 0
  enable_thinking: bool | None = None

  def __post_init__(self):
    p = f"roles.{self.name}"
    if self.name not in ROLES:
      raise ValueError(f"unknown role {self.name!r}; the roles are {ROLES}")
    if self.backend not in BACKENDS:
      raise ValueError(f"{p}.backend={self.backend!r} is not one of {BACKENDS}")
    if not self.temperature >= 0:
      raise ValueError(f"{p}.temperature must be >= 0 (0 = greedy), got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"{p}.top_p must be in (0, 1], got {self.top_p}")
    if self.max_new_tokens < 0:
      raise ValueError(f"{p}.max_new_tokens must be >= 0 (0 = rollout.max_response_len), got {self.max_new_tokens}")
    if self.backend == "local":
      self._check_local(p)
    elif self.backend == "endpoint":
      self._check_endpoint(p)

  def _check_local(self, p: str) -> None:
    if self.model_source not in LOCAL_SOURCES:
      raise ValueError(f"{p}.model_source={self.model_source!r} must be one of {LOCAL_SOURCES} for backend "
                       f"'local'; set --config.{p}.model_source")
    path = pathlib.Path(self.model_path).expanduser()
    if self.model_source == "hf" and not (path / "config.json").is_file():
      raise ValueError(f"{p}.model_path={self.model_path!r} is not a Hugging Face model directory (no "
                       f"config.json); download the model there or fix --config.{p}.model_path")
    if self.model_source == "gguf" and not (self.model_path and path.is_file()):
      raise ValueError(f"{p}.model_path={self.model_path!r} is not a GGUF file; pass --config.{p}.model_path=<file>")
    if self.model_source == "preset":
      from resd_jax.models.config import PRESETS
      if self.model_path not in PRESETS:
        raise ValueError(f"{p}.model_path={self.model_path!r} names no preset; use one of {sorted(PRESETS)}")

  def _check_endpoint(self, p: str) -> None:
    url = urllib.parse.urlsplit(self.base_url)
    if not self.base_url or url.scheme not in ("http", "https") or not url.hostname:
      raise ValueError(f"{p}.base_url={self.base_url!r} is not an http(s) URL; pass e.g. "
                       f"--config.{p}.base_url=http://127.0.0.1:8000/v1")
    if url.username or url.password or url.query:
      raise ValueError(f"{p}.base_url must not carry credentials or a query string (it is saved with the run); "
                       f"put the key in the environment variable named by {p}.api_key_env")
    if not self.model:
      raise ValueError(f"{p}.model is empty; pass the endpoint's model name with --config.{p}.model")
    if not _ENV_NAME.match(self.api_key_env):
      raise ValueError(f"{p}.api_key_env={self.api_key_env!r} is not an environment variable name; pass the NAME "
                       f"of the variable holding the key (e.g. --config.{p}.api_key_env=OPENAI_API_KEY), never the key")
    if not self.timeout_s > 0:
      raise ValueError(f"{p}.timeout_s must be > 0, got {self.timeout_s}")
    if self.max_retries < 0:
      raise ValueError(f"{p}.max_retries must be >= 0, got {self.max_retries}")
    if self.max_concurrency < 1:
      raise ValueError(f"{p}.max_concurrency must be >= 1, got {self.max_concurrency}")

  def check_environment(self) -> None:
    """The endpoint's key variable must be set (to anything, e.g. EMPTY for a server without auth)."""
    if self.backend == "endpoint" and self.api_key_env not in os.environ:
      raise ValueError(f"roles.{self.name}.api_key_env names {self.api_key_env}, which is not set; export "
                       f"{self.api_key_env}=<key> (any value for a server without auth)")

  def budget(self, rollout_max_response_len: int) -> int:
    return int(self.max_new_tokens) or int(rollout_max_response_len)

  def describe(self, policy_model: str = "") -> dict[str, Any]:
    """What played the role, for the run's records (roles.json, checkpoint side state): no secrets."""
    out: dict[str, Any] = {"backend": self.backend, "temperature": self.temperature, "top_p": self.top_p,
                           "max_new_tokens": self.max_new_tokens, "enable_thinking": self.enable_thinking}
    if self.backend == "policy":
      out["model"] = policy_model
    elif self.backend == "local":
      out["model"] = f"{self.model_source}:{self.model_path}" if self.model_path else self.model_source
    else:
      out.update(model=self.model, base_url=self.base_url, api_key_env=self.api_key_env)
    return out


def roles_from_config(cfg: Any) -> dict[str, RoleConfig]:
  """RoleConfigs of a run config's `roles` section (a ConfigDict or a RunConfig; ValueError, one line, on a bad
  value)."""
  from resd_jax.config_schema import as_run  # noqa: PLC0415
  return as_run(cfg).role_configs()
