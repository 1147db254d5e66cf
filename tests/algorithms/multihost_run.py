"""Driver of the multi-host tests: the tiny run of tiny_run.py in one process of a (possibly) multi-process job.

  [JAX_COORDINATOR_ADDRESS=... JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i] \
      python tests/algorithms/multihost_run.py WORKDIR DUMPDIR '{"config.key": value, ...}'

Joins the distributed runtime as launch/train.py does, trains (or resumes) in WORKDIR and then writes, for the
test to compare, into DUMPDIR (outside WORKDIR):
  process_<i>.json   the context engine's state (playbook, solution buffer), cursor, status, and the files this
                     process created or opened for writing in WORKDIR outside checkpoints/ (an audit hook);
  params_<i>.npz     the final parameters, gathered to host.
Prints `STEP <n>` (flushed) before each inner update, so a test can kill a process in the middle of the run.
"""
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

def register_parity_task() -> None:
  """tiny_parity: tiny_words graded by the parity of the reply's length, so that a random-weight model has
  successes too and the solution buffer fills with sampled texts (which must agree across processes)."""
  from resd_jax.tasks.base import Grade, register
  from tiny_run import TinyWordsTask

  @register("tiny_parity")
  class TinyParityTask(TinyWordsTask):
    name = "tiny_parity"

    def grade(self, example, response_text, *, truncated=False):
      base = super().grade(example, response_text, truncated=truncated)
      ok = isinstance(response_text, str) and len(response_text) % 2 == 0
      return Grade(float(ok), base.acc, "" if ok else "The reply has an odd number of characters.", base.info)


WRITE_EVENTS = ("os.mkdir", "os.rename", "os.remove", "shutil.move", "shutil.rmtree", "os.rmdir")


def audit_writes(workdir: pathlib.Path, log: list[str]) -> None:
  """Record every Python-level file creation / write / move / removal under `workdir` but outside checkpoints/
  (Orbax writes there from every process, as it must)."""
  root, skip = str(workdir.resolve()), str((workdir / "checkpoints").resolve())

  def inside(path) -> bool:
    try:
      p = os.path.abspath(os.fsdecode(path))
    except TypeError:
      return False
    return (p == root or p.startswith(root + os.sep)) and not (p == skip or p.startswith(skip + os.sep))

  def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
      mode, flags = args[1], args[2] if len(args) > 2 else 0
      writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(flags & (os.O_WRONLY | os.O_RDWR))
      if writes and inside(args[0]):
        log.append(f"open {args[0]}")
    elif event in WRITE_EVENTS and args and inside(args[0]):
      log.append(f"{event} {args[0]}")
  sys.addaudithook(hook)


def main(argv):
  workdir, dumpdir = pathlib.Path(argv[1]), pathlib.Path(argv[2])
  overrides = json.loads(argv[3]) if len(argv) > 3 else {}
  from resd_jax.parallel.mesh import DistributedInitError, maybe_initialize_distributed
  try:
    maybe_initialize_distributed()
  except DistributedInitError as e:
    sys.exit(f"error: {e}")
  import jax
  import numpy as np
  from flax import nnx

  from resd_jax import loop as resd
  from resd_jax.parallel import placement
  from tiny_run import tiny_config  # registers the tiny_words task
  register_parity_task()

  index = jax.process_index()
  writes: list[str] = []
  audit_writes(workdir, writes)
  trainer = resd.Trainer(tiny_config("resd", overrides), workdir)
  inner_update = trainer.inner_update

  def announced(examples):
    print(f"STEP {trainer.cursor.step}", flush=True)
    return inner_update(examples)
  trainer.inner_update = announced
  try:
    summary = trainer.run()
    params = placement.to_host(trainer.state.params)  # a collective: every process gathers
  finally:
    trainer.close()
  dumpdir.mkdir(parents=True, exist_ok=True)
  flat = {"/".join(map(str, path)): np.asarray(v.get_value()) for path, v in nnx.to_flat_state(params)}
  np.savez(dumpdir / f"params_{index}.npz", **flat)
  (dumpdir / f"process_{index}.json").write_text(json.dumps(
      {"process_count": jax.process_count(), "device_count": jax.device_count(),
       "context": trainer.updater.state_dict(), "cursor": trainer.cursor.to_dict(), "status": summary.status,
       "writes": writes}, sort_keys=True))
  print(f"DONE {summary.status} {summary.step}", flush=True)


if __name__ == "__main__":
  main(sys.argv)
