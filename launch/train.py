"""Train with RESD (or the SDPO / GRPO baselines) from a config; see resd_jax/cli/train.py.

  python launch/train.py --config=configs/manufactoria.py:tiny --workdir=runs/quick
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resd_jax.cli.train import run  # noqa: E402

if __name__ == "__main__":
  run()
