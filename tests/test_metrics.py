"""Metric writer: JSONL lines with (sum, count) reduced to means plus raw sums; playbook text files."""
import json

from resd_jax import metrics as mx


def test_jsonl_reduces_pairs_and_keeps_sums(tmp_path):
  w = mx.MetricWriter(tmp_path, tensorboard=True)
  w.write(3, {"loss": (6.0, 4), "lr": 1e-6, "empty": (0.0, 0), "text": "ignored"})
  w.write(4, {"loss": (1.0, 2), "bad": float("nan")})
  w.close()
  rows = mx.read_jsonl(tmp_path / "metrics.jsonl")
  assert rows[0] == {"step": 3, "loss": 1.5, "loss/sum": 6.0, "loss/count": 4.0, "lr": 1e-6, "empty": 0.0,
                     "empty/sum": 0.0, "empty/count": 0.0}
  assert rows[1]["loss"] == 0.5 and rows[1]["bad"] is None
  # A torn last line (killed writer) is skipped.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "lo')
  assert len(mx.read_jsonl(tmp_path / "metrics.jsonl")) == 2


def test_merge_pairs_and_disabled_writer(tmp_path):
  acc = {}
  mx.merge_pairs(acc, {"a": (1.0, 2), "b": 3.0})
  mx.merge_pairs(acc, {"a": (2.0, 1)}, prefix="")
  assert acc == {"a": (3.0, 3), "b": (3.0, 1)}
  w = mx.MetricWriter(tmp_path / "off", enabled=False)
  assert w.write(1, {"x": (2.0, 1)}) == {"x": 2.0, "x/sum": 2.0, "x/count": 1.0}
  assert not (tmp_path / "off").exists()


def test_playbook_text_and_quiet_progress(tmp_path):
  p = mx.write_playbook_text(tmp_path, 12, "[str-00001] helpful=1 harmful=0 :: check empty tape")
  assert p.name == "playbook_00000012.txt" and "check empty tape" in p.read_text()
  bar = mx.progress(range(3), desc="x", enabled=False)
  assert list(bar) == [0, 1, 2]


def test_console_lines_show_phases_headlines_and_validation(tmp_path, capsys):
  w = mx.MetricWriter(tmp_path, console=True, tensorboard=False)
  w.write(3, {"time/rollout": 21.04, "time/context": 70.0, "time/nested/part": 1.0, "rollout/success": (1.0, 4),
              "train/loss": (0.5, 2), "context/playbook/size": (7, 1)})
  w.write(4, {"val/per_task/mean@n": 0.25, "val/per_task/best@n": 0.5, "time/validation": 33.3})
  w.close()
  out = capsys.readouterr().out.splitlines()
  assert out == ["step 3: rollout 21.0s, context 70.0s | success 0.25, loss 0.25, playbook 7",
                 "validation at step 4: per_task mean@n 0.2500, best@n 0.5000 (33.3 s)"]
