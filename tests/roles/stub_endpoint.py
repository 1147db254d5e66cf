"""A stub OpenAI-compatible chat-completions server on 127.0.0.1 (a random free port) for the role tests.

`StubEndpoint(reply)`: `reply(request_json, path) -> (status, body bytes, delay_s)` decides each answer. Every
request is recorded (path, parsed JSON, Authorization header); the server runs in a daemon thread and stops on
`close()` (or as a context manager). Run as a script it serves deterministic role answers until killed.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import sys
import threading
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

MAX_REQUEST_BYTES = 1 << 22


def completion(content, finish_reason="stop", **message) -> bytes:
  msg = {"role": "assistant", "content": content, **message}
  return json.dumps({"id": "x", "object": "chat.completion", "model": "stub",
                     "choices": [{"index": 0, "message": msg, "finish_reason": finish_reason}]}).encode()


class StubEndpoint:
  def __init__(self, reply):
    self.reply = reply
    self.requests: list[dict] = []
    self.lock = threading.Lock()
    self.in_flight = self.max_in_flight = 0
    stub = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):  # quiet
        pass

      def do_POST(self):  # noqa: N802
        n = min(int(self.headers.get("Content-Length") or 0), MAX_REQUEST_BYTES)
        raw = self.rfile.read(n)
        try:
          req = json.loads(raw)
        except ValueError:
          req = None
        with stub.lock:
          stub.requests.append({"path": self.path, "json": req, "auth": self.headers.get("Authorization")})
          stub.in_flight += 1
          stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
        try:
          status, body, delay, *extra = stub.reply(req, self.path)
          if delay:
            time.sleep(delay)
          self.send_response(status)
          for k, v in (extra[0] if extra else {}).items():
            self.send_header(k, v)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(body)))
          self.end_headers()
          self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
          pass
        finally:
          with stub.lock:
            stub.in_flight -= 1

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.server.daemon_threads = True
    self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    self.thread.start()

  @property
  def base_url(self) -> str:
    return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

  def close(self) -> None:
    self.server.shutdown()
    self.server.server_close()
    self.thread.join(timeout=5)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ----- deterministic role answers (a pure function of the request: replayable) ------------------------------
def role_of(req) -> str:
  from resd_jax.context import prompts
  system = req["messages"][0]["content"] if req and req.get("messages") else ""
  return {prompts.REFLECTOR_SYSTEM: "reflector", prompts.TAGGER_SYSTEM: "tagger",
          prompts.CURATOR_SYSTEM: "curator"}.get(system, "other")


def scripted_reply(req, path):
  """Role answers derived from the request text; one request in eight (by hash) fails with HTTP 500 or a
  malformed body, so runs see failures too - deterministically."""
  text = json.dumps(req, sort_keys=True) if req else ""
  h = int(hashlib.sha256(text.encode()).hexdigest(), 16)
  if h % 16 == 0:
    return 500, b'{"error": "stub failure"}', 0
  if h % 16 == 1:
    return 200, b'{"choices": [ not json', 0
  role, user = role_of(req), req["messages"][-1]["content"] if req else ""
  word = "unknown"
  for w in ("apple", "river", "stone", "cloud", "ember", "maple", "tiger", "lemon"):
    if w in user:
      word = w
      break
  if role == "reflector":
    return 200, completion("<think>short</think>" + json.dumps({
      "reasoning": "r", "error_identification": f"did not write {word}", "root_cause_analysis": "ignored the ask",
      "correct_approach": f"write the word {word}", "key_insight": "Reply with exactly the requested word.",
      "bullet_tags": []})), 0
  if role == "tagger":
    ids = re.findall(r"\[([a-z]+-\d{5})\]", user) or re.findall(r"\b([a-z]+-\d{5})\b", user)
    return 200, completion(json.dumps({"bullet_tags": [{"id": i, "tag": "helpful"} for i in ids[:2]]})), 0
  if role == "curator":
    return 200, completion(json.dumps({"reasoning": "r", "operations": [
      {"type": "ADD", "section": "common_mistakes_to_avoid", "content": f"When asked for {word}, write {word}."}]})), 0
  return 400, b'{"error": "unknown role"}', 0


if __name__ == "__main__":
  stub = StubEndpoint(scripted_reply)
  print(stub.base_url, flush=True)
  try:
    while True:
      time.sleep(1)
  except KeyboardInterrupt:
    stub.close()
