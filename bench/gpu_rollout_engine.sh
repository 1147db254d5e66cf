#!/usr/bin/env bash
# The issue-22 GPU check in one command (NVIDIA GPU, JAX with CUDA; PyTorch + transformers for the peer when
# torch sees the GPU):
#   bash bench/gpu_rollout_engine.sh        # log in $OUT/rollout_engine_gpu.txt (or /tmp/out)
# 1. The engine's kernel tests on the real device: the Pallas GPU (Triton) paged-attention kernel against the
#    float64 reference and the engine decoding through it against the static sampler (on the CPU these run in
#    Pallas' interpreter). Float32 on a GPU may use TF32 matmuls: a tolerance failure here says so.
# 2. Qwen3-1.7B shapes in bf16 (random weights), 64 rows of 2,048-token prompts, 2,048 new tokens each: engine
#    tokens/s and the fraction of the HBM roofline (4,800 GB/s, the H200's spec; --hbm_gbps for another GPU)
#    with the ragged XLA decode path and with the Pallas GPU kernel, then the static sampler and transformers.
log=rollout_engine_gpu.txt
source "$(dirname "$0")/gpu_common.sh"
timeout 150 $py -m pytest -q -x tests/sampling/test_engine.py -k "gpu_kernel or through_the_gpu_kernel" 2>&1 | tee -a "$log"
timeout 400 $py bench/rollout_engine.py --part gpu --sides engine,static,transformers 2>&1 | tee -a "$log"
