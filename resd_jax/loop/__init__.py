"""The training loop: one `Trainer` for every algorithm (`resd_jax/algorithms/`) and every task
(`resd_jax/tasks/`), single-turn (`single_turn.py`) or multi-turn (`multi_turn.py`) as the task says.

  from resd_jax.loop import Trainer, train
  summary = train(cfg, "runs/quick")          # or Trainer(cfg, workdir).run(), then .close()
"""
from resd_jax.loop.trainer import Cursor, RunSummary, Trainer, evaluate_checkpoint, outer_batches, train

__all__ = ["Cursor", "RunSummary", "Trainer", "evaluate_checkpoint", "outer_batches", "train"]
