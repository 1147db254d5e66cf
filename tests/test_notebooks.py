"""The notebooks run top to bottom (nbclient) with small settings and produce their figures.

Each notebook's first code cell holds its parameters; the tests replace that cell with small settings.
"""
import importlib.util
import os
import pathlib
import re
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def _analysis_tests():
  spec = importlib.util.spec_from_file_location("_test_analysis_helpers", pathlib.Path(__file__).with_name(
      "test_analysis.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def execute(name: str, parameters: str, timeout: int = 600):
  """Run notebooks/<name> with its first code cell replaced by `parameters`; returns the executed notebook."""
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  first = next(c for c in nb.cells if c.cell_type == "code")
  first.source = parameters
  client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                   resources={"metadata": {"path": str(ROOT)}})
  client.execute()
  return nb


def outputs(nb, mime: str) -> list:
  return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
          if mime in o.get("data", {})]


def stream_text(nb) -> str:
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if o.get("output_type") == "stream")


def test_all_notebooks_are_valid_and_stored_without_outputs():
  for path in sorted(NOTEBOOKS.glob("*.ipynb")):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"


def test_playbook_explorer_on_a_run_directory(tmp_path):
  helpers = _analysis_tests()
  a = helpers.write_run(tmp_path / "resd", helpers.demo_rows(), helpers.demo_playbooks(), checkpoint_steps=(1, 2))
  b = helpers.write_run(tmp_path / "sdpo", helpers.demo_rows(0.5), {})
  nb = execute("playbook_explorer.ipynb", f"RUNS = {{'RESD': {str(a)!r}, 'SDPO': {str(b)!r}}}")
  # success, validation, playbook, 2 entry flows, 2 timings, one metric: 8 figures.
  assert len(outputs(nb, "image/png")) == 8
  text = stream_text(nb)
  assert "RESD: 4 metric records" in text and "playbook snapshots at [1, 2]" in text
  assert "[err-00001] helpful=2 harmful=1 :: Check the empty tape." in text
  html = "".join(o["data"]["text/html"] for o in outputs(nb, "text/html"))
  assert "+1 added, -1 removed, 1 changed" in html


@pytest.mark.slow  # runs the trainer (compiles sampler, context generation and the train step)
def test_qwen3_colab_smoke_test_on_cpu(tmp_path):
  """The Colab notebook with SMOKE_TEST: tiny random model + embedded tokenizer, no download, 2 steps."""
  nb = execute("qwen3_colab.ipynb", f"MODEL_ID = 'Qwen/Qwen3-0.6B'\nSMOKE_TEST = True\nWORKDIR = {str(tmp_path / 'run')!r}\n"
               "MAX_STEPS = 1\nBATCH_PROMPTS = 8\nMAX_PROMPT_TOKENS = 1024\nMAX_RESPONSE_TOKENS = 16\n"
               "ENABLE_THINKING = False\nLORA = True\nLORA_RANK = 4\nREPO_DIR = 'resd-jax'\nREPO_URL = ''")
  text = stream_text(nb)
  assert "max_steps at step 1" in text, text[-3000:]
  assert "LoRA: on, rank 4" in text and (tmp_path / "run" / "peft_adapter" / "adapter_config.json").is_file()
  assert len(outputs(nb, "image/png")) == 4
  assert any("<span" in o["data"]["text/html"] for o in outputs(nb, "text/html"))  # the KL strip
  assert (tmp_path / "run" / "metrics.jsonl").is_file()


@pytest.mark.slow  # runs the trainer (compiles sampler, context generation and the train step)
def test_quickstart_then_playbook_explorer_on_its_run(tmp_path):
  """quickstart.ipynb with small settings (a random tiny model instead of SmolLM2 to fit the CPU test budget;
  the notebook's default is the embedded SmolLM2), then playbook_explorer.ipynb on the run it wrote."""
  workdir = tmp_path / "quickstart"
  nb = execute("quickstart.ipynb", f"WORKDIR = {str(workdir)!r}\nMODEL_SOURCE = 'preset'\nMAX_STEPS = 1\n"
               "BATCH_PROMPTS = 2\nMAX_RESPONSE_TOKENS = 16\nCONTEXT_TOKENS = 16\nCHAT_TOKENS = 8\nTEST_PROBLEMS = 0\n"
               "REPO_DIR = 'resd-jax'\nREPO_URL = ''")
  text = stream_text(nb)
  assert "max_steps at step 1" in text, text[-3000:]
  for heading in ("RESPONSE:", "FEEDBACK:", "RAW REFLECTION", "REFLECTION (parsed", "teacher sees:"):
    assert heading in text
  # The hand-written illustration goes through parsing and curation into the playbook diff.
  assert "Error: The answer is not a fenced Manufactoria program." in text
  # success + timings, playbook, token strip.
  assert len(outputs(nb, "image/png")) == 4
  html = "".join(o["data"]["text/html"] for o in outputs(nb, "text/html"))
  assert "<span" in html and "added," in html  # the KL strip and the playbook diff
  assert "+1 added" in html  # the illustration's lesson
  assert (workdir / "metrics.jsonl").is_file() and list((workdir / "playbooks").glob("playbook_*.txt"))

  nb = execute("playbook_explorer.ipynb", f"RUNS = {{'RESD': {str(workdir)!r}}}")
  assert len(outputs(nb, "image/png")) == 6  # success, validation, playbook, entry flow, timings, one metric
  assert "playbook snapshots at [1]" in stream_text(nb)


@pytest.mark.skipif(os.environ.get("RESD_SLOW_EMBEDDED") != "1",
                    reason="set RESD_SLOW_EMBEDDED=1: runs quickstart.ipynb with its defaults (embedded SmolLM2, "
                           "~6 min on 2 CPU cores)")
def test_quickstart_with_its_defaults_on_the_embedded_model(tmp_path, monkeypatch):
  """The quick start exactly as a user runs it (only WORKDIR moved), with the time budget it promises."""
  # The kernel inherits the environment: give it the user's single CPU device, not the suite's 8 simulated ones.
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                   if not f.startswith("--xla_force_host_platform_device_count"))
  monkeypatch.setenv("XLA_FLAGS", flags)
  nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
  params = next(c for c in nb.cells if c.cell_type == "code").source
  assert 'MODEL_SOURCE = "embedded"' in params
  workdir = tmp_path / "quickstart"
  start = time.time()
  nb = execute("quickstart.ipynb", re.sub(r'^WORKDIR = .*$', f"WORKDIR = {str(workdir)!r}", params, flags=re.M))
  minutes = (time.time() - start) / 60
  text = stream_text(nb)
  assert "1 device(s)" in text and "max_steps at step" in text and "RAW REFLECTION" in text, text[-3000:]
  assert len(outputs(nb, "image/png")) == 4
  assert (workdir / "metrics.jsonl").is_file()
  assert minutes < 10, f"the quick start took {minutes:.1f} min; it promises under 10 on a 2-core CPU"
