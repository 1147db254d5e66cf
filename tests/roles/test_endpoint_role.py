"""EndpointRole against a stub chat-completions server on 127.0.0.1: it plays each role through the context
updater; timeouts, HTTP errors, malformed, huge, binary, refused and hostile answers are counted and become
"no answer", never an exception; concurrency is bounded; redirects are not followed; the key goes only into
the Authorization header."""
import json
import sys
import pathlib

import pytest

from resd_jax.context import ContextConfig, ContextUpdater
from resd_jax.roles import RoleConfig, RoleGenerators
from resd_jax.roles import endpoint as ep

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "context"))
from context_fakes import sample  # noqa: E402
from stub_endpoint import StubEndpoint, completion, role_of  # noqa: E402

KEY = "sk-RESD-TEST-MARKER-7f3a9c"


@pytest.fixture
def key_env(monkeypatch):
  monkeypatch.setenv("RESD_TEST_KEY", KEY)
  return "RESD_TEST_KEY"


def role(stub, key_env, name="reflector", **kw):
  cfg = RoleConfig(name, backend="endpoint", base_url=stub.base_url, model="stub-model", api_key_env=key_env,
                   **{"timeout_s": 5.0, "max_retries": 1, **kw})
  return ep.EndpointRole(cfg, max_new_tokens=77, backoff_s=0.01)


CONV = [[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]]


def test_request_shape_and_key_only_in_the_header(key_env):
  with StubEndpoint(lambda req, path: (200, completion("hello"), 0)) as stub:
    r = role(stub, key_env, temperature=0.7, top_p=0.9, enable_thinking=False)
    assert r(CONV) == ["hello"]
    (got,) = stub.requests
  assert got["path"] == "/v1/chat/completions" and got["auth"] == f"Bearer {KEY}"
  body = got["json"]
  assert (body["model"], body["temperature"], body["top_p"], body["max_tokens"], body["messages"]) == \
    ("stub-model", 0.7, 0.9, 77, CONV[0])
  assert body["chat_template_kwargs"] == {"enable_thinking": False}
  m = r.take_metrics()
  assert m["role/reflector/calls"] == (1.0, 1) and m["role/reflector/failures"] == (0.0, 1)
  assert KEY not in json.dumps(m) + repr(r) + repr(vars(r)) + repr(vars(r.cfg))


def test_stub_plays_each_role_through_the_updater(key_env):
  from stub_endpoint import scripted_reply

  def reply(req, path):  # the scripted answers without the hashed failures
    role_name = role_of(req)
    word = "apple" if "apple" in req["messages"][-1]["content"] else "x"
    if role_name == "curator":
      return 200, completion(json.dumps({"operations": [{"type": "ADD", "section": "others",
                                                         "content": f"Say {word}."}]})), 0
    out = scripted_reply(req, path)
    while out[0] != 200 or b"not json" in out[1]:  # re-ask in a way that avoids the hashed failures
      req = dict(req, salt=req.get("salt", 0) + 1)
      out = scripted_reply(req, path)
    return out

  with StubEndpoint(reply) as stub:
    gens = RoleGenerators({n: role(stub, key_env, n) for n in ("reflector", "tagger", "curator")})
    upd = ContextUpdater(ContextConfig(), seed=0)
    r1 = upd.update([sample("a", ok=False, feedback="no apple", prompt="Reply with the word apple.")], gens, 1)
    assert "write the word apple" in r1.reflections[0]
    assert [e.content for e in upd.playbook.entries] == ["Say apple."]
    r2 = upd.update([sample("a", ok=True, prompt="Reply with the word apple.")], gens, 2)
    assert upd.playbook.entries[0].helpful == 1
    roles_seen = [role_of(q["json"]) for q in stub.requests]
  assert roles_seen == ["reflector", "curator", "tagger"]
  assert r1.metrics["context/role/reflector/calls"] == (1.0, 1)
  assert r1.metrics["context/role/curator/calls"] == (1.0, 1)
  assert r2.metrics["context/role/tagger/calls"] == (1.0, 1)


def test_timeout_is_retried_then_counted(key_env):
  with StubEndpoint(lambda req, path: (200, completion("late"), 1.0)) as stub:
    r = role(stub, key_env, timeout_s=0.2, max_retries=1)
    assert r(CONV) == [""]
    assert len(stub.requests) == 2
  m = r.take_metrics()
  assert m["role/reflector/timeouts"] == (1.0, 1) and m["role/reflector/retries"] == (1.0, 1)
  assert m["role/reflector/failures"] == (1.0, 1)


def test_http_500_retried_until_success_and_400_not_retried(key_env):
  seen = []

  def flaky(req, path):
    seen.append(1)
    return (500, b"{}", 0) if len(seen) < 3 else (200, completion("ok now"), 0)

  with StubEndpoint(flaky) as stub:
    r = role(stub, key_env, max_retries=2)
    assert r(CONV) == ["ok now"]
  m = r.take_metrics()
  assert m["role/reflector/retries"] == (2.0, 1) and m["role/reflector/failures"] == (0.0, 1)
  with StubEndpoint(lambda req, path: (400, b'{"error": "bad"}', 0)) as stub:
    r = role(stub, key_env, max_retries=3)
    assert r(CONV * 2) == ["", ""]
    assert len(stub.requests) == 2  # no retry of a client error
  m = r.take_metrics()
  assert m["role/reflector/http_errors"] == (2.0, 2) and m["role/reflector/retries"] == (0.0, 2)


def test_connection_refused_is_counted(key_env):
  stub = StubEndpoint(lambda req, path: (200, completion("x"), 0))
  url = stub.base_url
  stub.close()
  cfg = RoleConfig("curator", backend="endpoint", base_url=url, model="m", api_key_env=key_env, max_retries=1)
  r = ep.EndpointRole(cfg, 8, backoff_s=0.01)
  assert r(CONV) == [""]
  assert r.take_metrics()["role/curator/connection_errors"] == (1.0, 1)


HOSTILE = {
  "malformed_json": ((200, b'{"choices": [ {', 0), "unparseable"),
  "binary": ((200, bytes(range(256)) * 8, 0), "unparseable"),
  "not_an_object": ((200, b'[1, 2, 3]', 0), "unparseable"),
  "no_choices": ((200, b'{"choices": []}', 0), "unparseable"),
  "content_number": ((200, json.dumps({"choices": [{"message": {"content": 12}}]}).encode(), 0), "unparseable"),
  "deep_nesting": ((200, b"[" * 100000 + b"]" * 100000, 0), "unparseable"),
  "refusal": ((200, completion(None, refusal="I can't help with that."), 0), "refusals"),
  "content_filter": ((200, completion("", finish_reason="content_filter"), 0), "refusals"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_answers_are_counted_never_raised(key_env, case):
  answer, kind = HOSTILE[case]
  with StubEndpoint(lambda req, path: answer) as stub:
    r = role(stub, key_env, "tagger")
    assert r(CONV) == [""]
  m = r.take_metrics()
  assert m[f"role/tagger/{kind}"] == (1.0, 1) and m["role/tagger/failures"] == (1.0, 1)


def test_huge_surrogate_and_control_content_is_bounded_valid_text(key_env, monkeypatch):
  body = json.dumps({"choices": [{"message": {"content": "a\ud800b\x00c" + "z" * 300_000},
                                  "finish_reason": "length"}]}).encode()
  with StubEndpoint(lambda req, path: (200, body, 0)) as stub:
    r = role(stub, key_env)
    (text,) = r(CONV)
  text.encode("utf-8")
  assert text.startswith("a\ufffdb c") and len(text) <= 200_000
  assert r.take_metrics()["role/reflector/truncated"] == (1.0, 1)
  monkeypatch.setattr(ep, "MAX_RESPONSE_BYTES", 1000)  # a body past the cap is abandoned
  with StubEndpoint(lambda req, path: (200, body, 0)) as stub:
    r = role(stub, key_env)
    assert r(CONV) == [""]
  assert r.take_metrics()["role/reflector/unparseable"] == (1.0, 1)


def test_content_parts_and_thinking_output(key_env):
  answers = iter([completion([{"type": "text", "text": "part one, "}, {"type": "text", "text": "two"}, 5]),
                  completion("<think>long reasoning that never ends", finish_reason="length")])
  with StubEndpoint(lambda req, path: (200, next(answers), 0)) as stub:
    r = role(stub, key_env, max_concurrency=1)
    assert r(CONV * 2) == ["part one, two", ""]
  assert r.take_metrics()["role/reflector/cut_in_reasoning"] == (1.0, 2)


def test_concurrency_is_bounded_and_order_kept(key_env):
  def echo(req, path):
    return 200, completion(req["messages"][-1]["content"]), 0.05

  convs = [[{"role": "user", "content": f"q{i}"}] for i in range(12)]
  with StubEndpoint(echo) as stub:
    r = role(stub, key_env, max_concurrency=3)
    assert r(convs) == [f"q{i}" for i in range(12)]
    assert 1 <= stub.max_in_flight <= 3


def test_redirects_are_not_followed(key_env):
  def reply(req, path):
    if path.startswith("/v1"):
      return 302, b"", 0, {"Location": "/elsewhere"}
    return 200, completion("followed"), 0

  with StubEndpoint(reply) as stub:
    r = role(stub, key_env, max_retries=0)
    assert r(CONV) == [""]
    assert [q["path"] for q in stub.requests] == ["/v1/chat/completions"]
  assert r.take_metrics()["role/reflector/http_errors"] == (1.0, 1)


def test_updater_survives_every_failure_kind(key_env):
  kinds = iter([(500, b"{}", 0), (200, b"garbage", 0), (200, completion(None, refusal="no"), 0),
                (200, completion("\ud800" * 10), 0)] * 4)
  with StubEndpoint(lambda req, path: next(kinds)) as stub:
    gens = RoleGenerators({n: role(stub, key_env, n, max_retries=0, max_concurrency=1)
                           for n in ("reflector", "tagger", "curator")})
    upd = ContextUpdater(ContextConfig(), seed=0)
    res = upd.update([sample(f"e{i}", ok=False, feedback="f") for i in range(4)], gens, 1)
  assert res.reflections == [""] * 4 and len(upd.playbook) == 0
  m = res.metrics
  assert m["context/role/reflector/failures"] == (3.0, 4)
  assert m["context/reflect/parse_failed"] == (4.0, 4)
