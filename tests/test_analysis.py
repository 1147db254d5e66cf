"""resd_jax.analysis: run loading, figures, playbook diffs, token strips and per-token KL.

The synthetic run directories are written with `resd_jax.metrics` (the trainer's own writer), so the format the
loader reads cannot drift from the one the trainer writes.
"""
import dataclasses
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resd_jax import analysis
from resd_jax.context.playbook import Playbook
from resd_jax.metrics import MetricWriter, write_playbook_text

pytest.importorskip("matplotlib")


def write_run(workdir: pathlib.Path, rows: dict[int, dict], playbooks: dict[int, Playbook],
              checkpoint_steps=()) -> pathlib.Path:
  """A run directory as the trainer (resd_jax.algorithms.resd) writes it: metrics via MetricWriter, playbook text
  per checkpoint step under playbooks/, Orbax step folders under checkpoints/."""
  writer = MetricWriter(workdir, tensorboard=False)
  for step, metrics in rows.items():
    writer.write(step, metrics)
  writer.close()
  for step, pb in playbooks.items():
    write_playbook_text(workdir / "playbooks", step, pb.render())
  for step in checkpoint_steps:
    (workdir / "checkpoints" / str(step)).mkdir(parents=True, exist_ok=True)
  return workdir


def demo_playbooks() -> dict[int, Playbook]:
  pb = Playbook()
  a = pb.add("common_mistakes_to_avoid", "Check the empty tape.", step=1)
  b = pb.add("strategies_and_insights", "Route red first.", step=1)
  snap1 = Playbook.from_json(pb.to_json())
  pb.tag(a.id, "helpful")
  pb.tag(a.id, "helpful")
  pb.tag(b.id, "harmful")
  pb.remove([b.id])
  pb.add("others", "Blue <b>means</b> 1 & red means 0.", step=2)
  pb.tag(a.id, "harmful")
  return {1: snap1, 2: pb}


SUCCESS = {1: (1, 4), 2: (2, 4), 3: (3, 4)}
VAL = {0: (0.1, 0.3, 0.2, 0.5), 2: (0.2, 0.5, 0.4, 0.7), 3: (0.25, 0.5, 0.45, 0.8)}


def demo_rows(scale: float = 1.0) -> dict[int, dict]:
  rows: dict[int, dict] = {}
  for step, (s, c) in SUCCESS.items():
    rows.setdefault(step, {}).update({
        "rollout/success": (s * scale, c), "context/curate/added": (step, step + 1),
        "context/prune/removed": (step - 1, 1), "context/playbook/size": (2 * step, 1),
        "time/rollout": 1.5 * step, "time/step": 0.5, "time/reflection": 0.25 * step})
  for step, (a, b, c, d) in VAL.items():
    rows.setdefault(step, {}).update({"val/per_task/mean@n": a, "val/per_task/best@n": b,
                                      "val/per_test_case/mean@n": c, "val/per_test_case/best@n": d})
  return rows


@pytest.fixture
def run_dir(tmp_path):
  return write_run(tmp_path / "resd", demo_rows(), demo_playbooks(), checkpoint_steps=(1, 2))


def test_load_run_series_and_snapshots(run_dir):
  run = analysis.load_run(run_dir)
  assert run.name == "resd"
  assert run.checkpoint_steps == [1, 2]
  assert run.playbook_steps == [1, 2]
  steps, values = run.series("rollout/success")
  np.testing.assert_array_equal(steps, [1, 2, 3])
  np.testing.assert_allclose(values, [0.25, 0.5, 0.75])
  # (sum, count) metrics: totals come from the raw sums.
  np.testing.assert_allclose(run.count_series("context/curate/added")[1], [1, 2, 3])
  assert run.find_key("per_task/mean@n") == "val/per_task/mean@n"
  assert run.find_key(["nope", "playbook/size"]) == "context/playbook/size"
  assert run.find_key("absent") is None
  pb2 = run.playbook(2)
  assert [(e.content, e.helpful, e.harmful) for e in pb2.entries] == [
      ("Check the empty tape.", 2, 1), ("Blue <b>means</b> 1 & red means 0.", 0, 0)]
  with pytest.raises(KeyError, match="no playbook snapshot at step 5"):
    run.playbook(5)


def test_series_keeps_last_value_of_a_repeated_step(tmp_path):
  w = MetricWriter(tmp_path / "r", tensorboard=False)
  w.write(1, {"loss": 3.0})
  w.write(2, {"loss": 2.0})
  w.write(2, {"loss": 1.0, "other": float("nan")})  # resumed run rewrites step 2; nan is stored as null
  w.close()
  run = analysis.load_run(tmp_path / "r")
  np.testing.assert_allclose(run.series("loss")[1], [3.0, 1.0])
  assert len(run.series("other")[0]) == 0


def test_load_run_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    analysis.load_run(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="is it a training run"):
    analysis.load_run(tmp_path / "empty")


def test_comparison_figures_have_one_line_per_run(tmp_path):
  runs = [analysis.load_run(write_run(tmp_path / n, demo_rows(k), {}), name=n)
          for n, k in (("RESD", 1.0), ("SDPO", 0.5), ("GRPO", 0.25))]
  fig = analysis.plot_success(runs)
  (ax,) = fig.axes
  assert [l.get_label() for l in ax.lines] == ["RESD", "SDPO", "GRPO"]
  for line, k in zip(ax.lines, (1.0, 0.5, 0.25)):
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(line.get_ydata(), [k * s / c for s, c in SUCCESS.values()])

  fig = analysis.plot_validation(runs)
  left, right = fig.axes
  assert len(left.lines) == len(right.lines) == 6  # mean@n and best@n per run
  np.testing.assert_allclose(left.lines[0].get_ydata(), [v[0] for v in VAL.values()])
  np.testing.assert_allclose(left.lines[1].get_ydata(), [v[1] for v in VAL.values()])
  np.testing.assert_allclose(right.lines[1].get_ydata(), [v[3] for v in VAL.values()])
  assert left.lines[1].get_linestyle() == "--"


def test_playbook_figure(run_dir):
  fig = analysis.plot_playbook(analysis.load_run(run_dir))
  left, right = fig.axes
  (size,) = left.lines
  np.testing.assert_allclose(size.get_ydata(), [2, 4, 6])  # the logged metric wins over the snapshots
  helpful, harmful = right.lines
  np.testing.assert_array_equal(helpful.get_xdata(), [1, 2])
  np.testing.assert_allclose(helpful.get_ydata(), [0, 2])
  np.testing.assert_allclose(harmful.get_ydata(), [0, 1])


def test_entry_flow_and_timings(run_dir):
  run = analysis.load_run(run_dir)
  fig = analysis.plot_entry_flow(run)
  (ax,) = fig.axes
  heights = [p.get_height() for p in ax.patches]
  assert heights == [1, 2, 3, 0, -1, -2]  # added up, removed down, per step 1..3

  assert list(analysis.timing_keys(run).items()) == [  # pipeline order
      ("rollout", "time/rollout"), ("reflection", "time/reflection"), ("step", "time/step")]
  fig = analysis.plot_timings(run)
  (ax,) = fig.axes
  assert len(ax.patches) == 3 * 3  # 3 phases x 3 steps
  tops = {}
  for p in ax.patches:
    tops[p.get_x()] = max(tops.get(p.get_x(), 0), p.get_y() + p.get_height())
  np.testing.assert_allclose(sorted(tops.values()), [1.75 * s + 0.5 for s in (1, 2, 3)])


def test_empty_run_figures_say_so(tmp_path):
  run = analysis.load_run(write_run(tmp_path / "r", {1: {"loss": 1.0}}, {}))
  for fig in analysis.report_figures(run).values():
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("no ") for t in texts), texts


def test_playbook_diff(run_dir):
  run = analysis.load_run(run_dir)
  d = analysis.diff_steps(run, 1, 2)
  assert [e.content for e in d.added] == ["Blue <b>means</b> 1 & red means 0."]
  assert [e.content for e in d.removed] == ["Route red first."]
  assert [(o.helpful, n.helpful, o.harmful, n.harmful) for o, n in d.changed] == [(0, 2, 0, 1)]
  assert d.text().splitlines()[0] == "+1 added, -1 removed, 1 changed"
  html = d.html()
  assert "&lt;b&gt;means&lt;/b&gt; 1 &amp; red" in html and "<b>means</b>" not in html
  assert html.count("<tr") == 4
  assert analysis.diff_steps(run, 2, 2).text() == "+0 added, -0 removed, 0 changed"
  explorer = analysis.diff_explorer(run)
  assert explorer is not None


def test_token_strip():
  tokens, values = ["a", "<b>", "\n", "d"], [0.0, 2.0, 1.0, float("nan")]
  html = analysis.token_strip_html(tokens, values)
  assert html.count("<span") == 4
  assert "&lt;b&gt;" in html and 'title="KL=2"' in html
  assert "background:#ffffff" in html.split("<span")[1] or "background:#fff5f0" in html.split("<span")[1]
  with pytest.raises(ValueError, match="one value per token"):
    analysis.token_strip_html(tokens, values[:2])
  fig = analysis.plot_token_strip(tokens * 5, values * 5, per_row=8)
  (ax,) = fig.axes
  assert len(ax.texts) == 20
  assert ax.get_ylim() == (-3, 0)


def _tiny_model():
  from resd_jax.models.config import ModelConfig
  from resd_jax.models.transformer import Transformer
  cfg = ModelConfig.preset("tiny")
  return Transformer(cfg, rngs=nnx.Rngs(0)), cfg


@nnx.jit
def _forward(model, tokens):
  hidden, _ = model(tokens)
  return model.logits(hidden)


def _reference_kl(model, student_prompt, teacher_prompt, response, teacher=None) -> np.ndarray:
  """Float64 NumPy KL(student ‖ teacher) from un-padded forwards of each sequence on its own."""
  def logprobs(prompt, model=model):
    seq = jnp.asarray([list(prompt) + list(response)])
    logits = np.asarray(_forward(model, seq), dtype=np.float64)[0, len(prompt) - 1: len(prompt) - 1 + len(response)]
    logits -= logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  lp, lq = logprobs(student_prompt), logprobs(teacher_prompt, teacher or model)
  return (np.exp(lp) * (lp - lq)).sum(-1)


def test_per_token_kl_matches_unpadded_reference():
  from resd_jax.context import BatchShape, assemble_batch
  model, cfg = _tiny_model()
  rng = np.random.default_rng(0)
  students = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (5, 3)]
  teachers = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (9, 7)]  # same total lengths: fewer compiles
  responses = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (4, 6)]
  shape = BatchShape(batch_size=3, max_prompt_len=6, max_teacher_prompt_len=10, max_response_len=6)
  batch = assemble_batch(students, teachers, responses, [None, None], [1.0, 1.0], [1, 1], shape, pad_id=0)
  kl = analysis.per_token_kl(model, batch)
  assert kl.shape == (3, 6)
  for i in range(2):
    ref = _reference_kl(model, students[i], teachers[i], responses[i])
    np.testing.assert_allclose(kl[i, :len(responses[i])], ref, rtol=2e-4, atol=1e-6)
    assert np.all(kl[i, len(responses[i]):] == 0)
  assert np.all(kl[2] == 0)  # padding row
  other = nnx.clone(model)
  other.final_norm[...] = other.final_norm[...] * 3.0  # a different teacher
  kl_other = analysis.per_token_kl(model, batch, teacher_model=other)
  ref = _reference_kl(model, students[0], teachers[0], responses[0], teacher=other)
  np.testing.assert_allclose(kl_other[0, :4], ref, rtol=2e-4, atol=1e-6)
  assert not np.allclose(kl_other[0, :4], kl[0, :4], rtol=1e-2)
  # Same prompts for both -> zero KL; trimming common left padding changes nothing.
  same = dataclasses.replace(batch, teacher_tokens=batch.student_tokens, teacher_mask=batch.student_mask)
  np.testing.assert_allclose(analysis.per_token_kl(model, same), 0.0, atol=1e-6)
  from resd_jax.analysis.tokens import _trim_left_padding
  trimmed = _trim_left_padding(batch)
  assert trimmed.teacher_tokens.shape[1] == 9 + 6
  # Same tolerance as against the reference: a different length changes XLA's float32 summation order, and a KL
  # of ~0.01 is a difference of log-probabilities that amplifies it.
  np.testing.assert_allclose(analysis.per_token_kl(model, trimmed), kl, rtol=2e-4, atol=1e-6)


def test_report_writes_pngs_and_diff(tmp_path):
  import subprocess
  import sys
  a = write_run(tmp_path / "a", demo_rows(), demo_playbooks(), checkpoint_steps=(1, 2))
  b = write_run(tmp_path / "b", demo_rows(0.5), {})
  script = pathlib.Path(__file__).resolve().parents[1] / "launch" / "report.py"
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, str(script), f"--workdir={a}", f"--workdir={b}", f"--out={out}"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  names = sorted(p.name for p in out.iterdir())
  assert names == ["entry_flow_a.png", "entry_flow_b.png", "playbook.png", "playbook_diff.txt", "success.png",
                   "timings_a.png", "timings_b.png", "validation.png"]
  assert all((out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names if n.endswith(".png"))
  assert "+1 added, -1 removed, 1 changed" in (out / "playbook_diff.txt").read_text()
  proc = subprocess.run([sys.executable, str(script), f"--workdir={tmp_path / 'missing'}", f"--out={out}"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "does not exist" in proc.stderr


def test_recording_generator_labels_context_outputs_by_prompt_kind():
  from resd_jax.analysis.tokens import _recording
  from resd_jax.context import prompts
  log = []
  gen = _recording(lambda convs: [f"out{i}" for i in range(len(convs))], log)
  convs = [[{"role": "system", "content": prompts.CURATOR_SYSTEM}, {"role": "user", "content": "u"}],
           [{"role": "system", "content": prompts.REFLECTOR_SYSTEM}, {"role": "user", "content": "u"}],
           [{"role": "user", "content": "no system prompt"}]]
  assert gen(convs) == ["out0", "out1", "out2"]
  assert log == [("curate", "out0"), ("reflect", "out1"), ("other", "out2")]
