# Sourced by the bench/gpu_*.sh checks: `log=NAME.txt; source bench/gpu_common.sh` sets up the environment, the
# log under $OUT (or /tmp/out) and $py, and writes the GPU and the package versions at the top of the log.
set -o pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
out=${OUT:-/tmp/out}
mkdir -p "$out"
log=$out/$log
py=${PYTHON:-python3}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $py -c "import jax, flax, optax, torch, transformers as t; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, 'torch', torch.__version__, 'transformers', t.__version__, jax.devices())"; } 2>&1 | tee -a "$log"
