"""`EndpointRole`: a context role played by an OpenAI-compatible chat-completions endpoint (stdlib only).

Every failure - timeout, connection error, HTTP error, refusal, an answer that is not the expected JSON -
is counted and turns into "" (no reflection / no tags / no operations); nothing here raises into the run.
The API key is read from the environment variable named by the config at each request, sent in the
Authorization header and kept in no attribute, log line, metric or exception text.

Metrics (name -> (sum, count), one count per conversation; the updater prefixes `context/`):
`role/<role>/{calls,failures,timeouts,connection_errors,http_errors,refusals,unparseable,retries,latency_s}`
plus the output counters of `output.record`.
"""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from resd_jax.context.types import Metrics
from resd_jax.roles import output
from resd_jax.roles.config import RoleConfig

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 4 << 20   # a larger response body is abandoned and counted as unparseable
_READ_CHUNK = 1 << 16
_RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)


class _Failure(Exception):
  """One request's failure kind (a metric name); `retry` says whether another attempt may help."""

  def __init__(self, kind: str, retry: bool):
    super().__init__(kind)
    self.kind, self.retry = kind, retry


class _NoRedirect(urllib.request.HTTPRedirectHandler):
  """Redirects are not followed (the Authorization header would go to the new location): HTTP error."""

  def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
    return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class EndpointRole:
  """`generate(conversations) -> texts` over HTTP; requests run in up to `max_concurrency` threads."""

  def __init__(self, cfg: RoleConfig, max_new_tokens: int, *, backoff_s: float = 1.0, max_backoff_s: float = 30.0):
    if cfg.backend != "endpoint":
      raise ValueError(f"EndpointRole needs roles.{cfg.name}.backend='endpoint', got {cfg.backend!r}")
    self.cfg = cfg
    self.role = cfg.name
    self.url = cfg.base_url.rstrip("/") + "/chat/completions"
    self.max_new_tokens = int(max_new_tokens)
    self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
    self._metrics = Metrics()
    self._lock = threading.Lock()

  def __repr__(self) -> str:
    return f"EndpointRole(role={self.role!r}, url={self.url!r}, model={self.cfg.model!r})"

  # ----- the generator contract -------------------------------------------------------------------------
  def __call__(self, conversations: list[list[dict[str, str]]]) -> list[str]:
    convs = list(conversations)
    if not convs:
      return []
    workers = min(self.cfg.max_concurrency, len(convs))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=f"role-{self.role}") as pool:
      return list(pool.map(self._one, convs))

  def take_metrics(self) -> dict[str, tuple[float, int]]:
    with self._lock:
      out, self._metrics = dict(self._metrics), Metrics()
    return out

  # ----- one conversation ---------------------------------------------------------------------------------
  def _one(self, conv: list[dict[str, str]]) -> str:
    m, p = Metrics(), f"role/{self.role}/"
    t0 = time.monotonic()
    text, failure, retries = "", None, 0
    for attempt in range(self.cfg.max_retries + 1):
      try:
        text, status = self._answer(self._post(self._body(conv)))
        output.record(m, self.role, status)
        failure = None
        break
      except _Failure as f:
        failure = f
        if not f.retry or attempt == self.cfg.max_retries:
          break
        retries += 1
        time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** attempt))
      except Exception as e:  # noqa: BLE001 - an unforeseen client error is one more counted failure
        failure = _Failure("client_errors", False)
        log.warning("role %s: unexpected %s from the endpoint client (counted, no answer)", self.role,
                    type(e).__name__)
        break
    m.add(p + "calls", 1)
    m.add(p + "retries", retries)
    m.add(p + "latency_s", time.monotonic() - t0)
    m.add(p + "failures", failure is not None)
    for kind in ("timeouts", "connection_errors", "http_errors", "refusals", "unparseable", "client_errors"):
      m.add(p + kind, failure is not None and failure.kind == kind)
    with self._lock:
      self._metrics.merge(m)
    return text

  def _body(self, conv: list[dict[str, str]]) -> bytes:
    body: dict[str, Any] = {"model": self.cfg.model, "messages": conv, "temperature": self.cfg.temperature,
                            "top_p": self.cfg.top_p, "max_tokens": self.max_new_tokens, "n": 1, "stream": False}
    if self.cfg.enable_thinking is not None:  # vLLM / SGLang pass these to the chat template
      body["chat_template_kwargs"] = {"enable_thinking": bool(self.cfg.enable_thinking)}
    return json.dumps(body, ensure_ascii=True).encode("ascii")

  def _post(self, data: bytes) -> bytes:
    """The response body of one POST (bounded in size and time), or a _Failure."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    key = os.environ.get(self.cfg.api_key_env, "")
    if key:
      headers["Authorization"] = "Bearer " + key
    del key
    req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
    deadline = time.monotonic() + self.cfg.timeout_s
    try:
      with _OPENER.open(req, timeout=self.cfg.timeout_s) as resp:
        chunks, size = [], 0
        while True:
          if time.monotonic() > deadline:
            raise _Failure("timeouts", True)
          chunk = resp.read(_READ_CHUNK)
          if not chunk:
            break
          size += len(chunk)
          if size > MAX_RESPONSE_BYTES:
            raise _Failure("unparseable", False)
          chunks.append(chunk)
        return b"".join(chunks)
    except _Failure:
      raise
    except urllib.error.HTTPError as e:
      e.close()
      raise _Failure("http_errors", e.code in _RETRY_STATUS) from None
    except (TimeoutError, socket.timeout):
      raise _Failure("timeouts", True) from None
    except urllib.error.URLError as e:
      timed_out = isinstance(e.reason, (TimeoutError, socket.timeout))
      raise _Failure("timeouts" if timed_out else "connection_errors", True) from None
    except (ConnectionError, http.client.HTTPException, OSError):
      raise _Failure("connection_errors", True) from None
    finally:
      req.headers.clear()  # the only place the key lived
      req.unredirected_hdrs.clear()

  def _answer(self, body: bytes) -> tuple[str, str]:
    """(answer text, output status) from a chat-completions response body, or a _Failure."""
    try:
      obj = json.loads(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
      raise _Failure("unparseable", False) from None
    choices = obj.get("choices") if isinstance(obj, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    msg = choice.get("message") if choice is not None else None
    if not isinstance(msg, dict):
      raise _Failure("unparseable", False)
    if msg.get("refusal") or choice.get("finish_reason") == "content_filter":
      raise _Failure("refusals", False)
    content = msg.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
      content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    if not isinstance(content, str):
      raise _Failure("unparseable", False)
    truncated = choice.get("finish_reason") == "length"
    return output.answer_of(output.sanitize(content), truncated)
