#!/usr/bin/env bash
# The issue-3 GPU check in one command (NVIDIA GPU, JAX with CUDA, PyTorch + transformers for the peer):
#   bash bench/gpu_train_step.sh            # log in $OUT/train_step_gpu.txt (or /tmp/out)
# 1. cuDNN flash attention (attn_impl="cudnn") against our blocked attention: values and gradients.
# 2. The SD train step for a Qwen3-1.7B-shaped random model with 8k-token student sequences (4096 prompt +
#    4096 response; teacher 6144 + 4096), MFU against the device's bf16 peak, next to the same step in PyTorch
#    `transformers` (bf16 autocast, SDPA attention) on the same GPU; then without remat.
log=train_step_gpu.txt
source "$(dirname "$0")/gpu_common.sh"
timeout 120 $py bench/gpu_attention_parity.py 2>&1 | tee -a "$log" || exit 1
big=(--preset qwen3_1p7b --batch 1 --prompt 4096 --teacher_prompt 6144 --response 4096 --layers scan --iters 5)
timeout 150 $py bench/train_step.py "${big[@]}" --remat full 2>&1 | tee -a "$log"
timeout 100 $py bench/train_step.py "${big[@]}" --remat none --skip_torch 2>&1 | tee -a "$log"
