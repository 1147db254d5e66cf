"""roles.* config: defaults follow the reference, every bad binding is a one-line error naming the key."""
import pytest

from resd_jax import config_schema
from resd_jax.configs import base
from resd_jax.roles import ROLES, RoleConfig, roles_from_config


def test_defaults_are_the_reference_rollout_settings_on_the_policy():
  roles = roles_from_config(base.get_base())
  for name in ROLES:
    r = roles[name]
    assert (r.backend, r.temperature, r.top_p, r.max_new_tokens, r.enable_thinking) == ("policy", 1.0, 0.95, 0, None)
    assert r.budget(20480) == 20480  # 0 = the rollout's response budget
  assert "temperature" not in base.get_base().context and "max_new_tokens" not in base.get_base().context


def test_tiny_sets_every_role_budget():
  assert {roles_from_config(base.get_config("tiny"))[n].max_new_tokens for n in ROLES} == {96}


@pytest.mark.parametrize("kw, message", [
  ({"backend": "remote"}, "roles.reflector.backend='remote' is not one of"),
  ({"backend": "endpoint", "model": "m", "api_key_env": "K"}, "roles.reflector.base_url='' is not an http(s) URL"),
  ({"backend": "endpoint", "base_url": "ftp://h/v1", "model": "m", "api_key_env": "K"}, "is not an http(s) URL"),
  ({"backend": "endpoint", "base_url": "http://u:secret@h/v1", "model": "m", "api_key_env": "K"},
   "must not carry credentials"),
  ({"backend": "endpoint", "base_url": "http://h/v1", "api_key_env": "K"}, "roles.reflector.model is empty"),
  ({"backend": "endpoint", "base_url": "http://h/v1", "model": "m"}, "api_key_env='' is not an environment variable"),
  ({"backend": "endpoint", "base_url": "http://h/v1", "model": "m", "api_key_env": "sk-abc123"},
   "pass the NAME of the variable"),
  ({"backend": "endpoint", "base_url": "http://h/v1", "model": "m", "api_key_env": "K", "timeout_s": 0},
   "timeout_s must be > 0"),
  ({"backend": "endpoint", "base_url": "http://h/v1", "model": "m", "api_key_env": "K", "max_concurrency": 0},
   "max_concurrency must be >= 1"),
  ({"backend": "local"}, "model_source='' must be one of"),
  ({"backend": "local", "model_source": "hf", "model_path": "/no/such/dir"}, "is not a Hugging Face model directory"),
  ({"backend": "local", "model_source": "gguf", "model_path": "/no/such.gguf"}, "is not a GGUF file"),
  ({"backend": "local", "model_source": "preset", "model_path": "huge?"}, "names no preset"),
  ({"top_p": 0.0}, "roles.reflector.top_p must be in (0, 1]"),
  ({"temperature": -1.0}, "temperature must be >= 0"),
  ({"max_new_tokens": -1}, "max_new_tokens must be >= 0"),
])
def test_bad_role_config_is_one_line_error(kw, message):
  with pytest.raises(ValueError) as e:
    RoleConfig("reflector", **kw)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_schema_checks_roles_and_the_key_variable_of_used_roles(monkeypatch):
  c = base.get_config("tiny")
  c.roles.curator.backend, c.roles.curator.base_url, c.roles.curator.model = "endpoint", "http://127.0.0.1:9/v1", "m"
  c.roles.curator.api_key_env = "RESD_TEST_UNSET_KEY_VAR"
  monkeypatch.delenv("RESD_TEST_UNSET_KEY_VAR", raising=False)
  with pytest.raises(config_schema.ConfigError, match="names RESD_TEST_UNSET_KEY_VAR, which is not set; export"):
    config_schema.check_roles(c)
  c.context.playbook = False  # the curator is not called: its key is not needed
  config_schema.check_roles(c)
  c.context.playbook, c.algorithm = True, "sdpo"
  config_schema.check_roles(c)
  monkeypatch.setenv("RESD_TEST_UNSET_KEY_VAR", "EMPTY")
  c.algorithm = "resd"
  config_schema.check_roles(c)
  c.roles.tagger.backend = "nope"
  with pytest.raises(config_schema.ConfigError, match="roles.tagger.backend='nope'"):
    config_schema.check_roles(c)


def test_describe_names_the_model_and_never_a_key(monkeypatch):
  monkeypatch.setenv("MY_KEY_VAR", "sk-SECRET-MARKER")
  r = RoleConfig("curator", backend="endpoint", base_url="http://h:1/v1", model="big-model", api_key_env="MY_KEY_VAR")
  d = r.describe()
  assert (d["backend"], d["model"], d["base_url"], d["api_key_env"]) == ("endpoint", "big-model", "http://h:1/v1",
                                                                         "MY_KEY_VAR")
  assert "SECRET" not in repr(d) + repr(r)
  assert RoleConfig("tagger").describe("embedded")["model"] == "embedded"
  assert RoleConfig("tagger", backend="local", model_source="preset", model_path="tiny").describe()["model"] == \
    "preset:tiny"
