#!/bin/bash
# The GPU benchmark, on the device machine (or any Linux GPU box), from the repository root.
#
#   bash benchmarks/gpu/run.sh stage              # copy this call's kit part to /tmp/gpukit (calls 1..N-1)
#   bash benchmarks/gpu/run.sh fill --fill-configs n1,n2 --fill-steps seed,small,rag --fill-raw n1
#                                                 # engine configurations filling one GPU
#   bash benchmarks/gpu/run.sh startup            # cold/warm starts with the start-up timeline
#   bash benchmarks/gpu/run.sh determinism        # same pairs alone/batched/under load; throughput cost
#   bash benchmarks/gpu/run.sh mixed              # small requests under long saturation, token budgets
#   bash benchmarks/gpu/run.sh multigpu           # on a multi-GPU kind: N=1,2,4,8 engines and
#                                                 # data-parallel, per-GPU throughput vs N=1 (repeat the
#                                                 # call until done: finished steps are skipped)
#   bash benchmarks/gpu/run.sh workloads --config NAME --flags "--max-num-batched-tokens 32768" --workloads seed,rag
#   bash benchmarks/gpu/run.sh vl [--shape vl-2b|vl-8b] [--concurrency 8,32] [--docs 8]
#                                                 # Qwen3-VL reranker, one 1024x1024 JPEG per document:
#                                                 # shim beside raw vLLM /rerank (builds the VL model;
#                                                 # repeat the call until done: finished steps are skipped)
#   bash benchmarks/gpu/run.sh stop               # stop a launcher left running
#
# Each phase is a module of benchmarks/gpu/phases/; `python3 -m benchmarks.gpu.orchestrate PHASE
# --help` lists its options.
#
# What a device call carries (see docs/gpu.md): one .gpukit/kN part per call; the last part's call
# also carries .whl (wheels the project needs and the device lacks) and .cache/qwen.tiktoken.
# Results: /tmp/bench/results.jsonl (kept across calls while the machine stays warm) and a copy in
# $OUT/results.jsonl; logs in $OUT/logs.tgz. Each phase keeps inside BENCH_BUDGET seconds (default
# 540) counted from the start of this script, so a 600-second device call never cuts it off.
set -uo pipefail
T0=$(date +%s)
BUDGET=${BENCH_BUDGET:-540}
PHASE=${1:?"usage: run.sh PHASE [options] (python3 -m benchmarks.gpu.orchestrate --help)"}; shift
export BENCH_WORK=${BENCH_WORK:-/tmp/bench}
OUT=${OUT:-$BENCH_WORK/out}
mkdir -p "$BENCH_WORK" "$OUT"
cd "$(dirname "$0")/../.."

if [ "$PHASE" = stage ]; then
  mkdir -p /tmp/gpukit && cp .gpukit/k*/part* /tmp/gpukit/ && ls -la /tmp/gpukit
  exit
fi

# --- install (idempotent: a warm machine keeps /tmp) ----------------------------------------------
if [ ! -f /tmp/site/.vllm-kit-done ]; then
  mkdir -p /tmp/gpukit && cp .gpukit/k*/part* /tmp/gpukit/ 2>/dev/null
  inst=$(ls .gpukit/k*/install-on-device.sh 2>/dev/null | head -1)
  [ -n "$inst" ] || { echo "no kit: carry the .gpukit parts first (docs/gpu.md)"; exit 2; }
  bash "$inst" || exit 2
fi
if [ ! -f /tmp/site/.bench-wheels-done ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl 2>&1 | grep -vi warning
  touch /tmp/site/.bench-wheels-done
fi
# bytecode, as the Docker image has it (its compileall step): the kit is unpacked without .pyc and
# the device does not write them, so every vLLM start compiled its sources again (py-spy saw
# source_to_code in about a fifth of a warm start's samples) and start-up figures came out too high
if [ ! -f /tmp/site/.bytecode-done ]; then
  t=$(date +%s)
  python3 -m compileall -q -j 0 /tmp/site >/dev/null 2>&1
  touch /tmp/site/.bytecode-done
  echo "{\"kind\":\"bytecode_compiled\",\"seconds\":$(( $(date +%s) - t ))}" | tee -a "$BENCH_WORK/results.jsonl"
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# the Qwen BPE ranks for the demo-model builder (the device cannot download them)
if [ -f .cache/qwen.tiktoken ]; then export RERANKER_CACHE_DIR=$PWD/.cache
elif [ -f .whl/qwen.tiktoken ]; then export RERANKER_CACHE_DIR=$PWD/.whl; fi
python3 -c "import server.app, launcher.cli, vllm" || { echo "imports failed"; exit 2; }

# --- the model: exact Qwen3-Reranker-0.6B shape, random weights, real tokenizer ---------------------
MODEL=$BENCH_WORK/models/qwen3-reranker-0.6b
if [ "$PHASE" != vl ] && [ ! -f "$MODEL/config.json" ]; then   # the vl phase builds its own model
  t=$(date +%s)
  python3 -m launcher.demo_model --shape 0.6b --out "$MODEL" || exit 2
  echo "{\"kind\":\"model_built\",\"seconds\":$(( $(date +%s) - t ))}" | tee -a "$BENCH_WORK/results.jsonl"
fi

# --- the phase -------------------------------------------------------------------------------------
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
python3 -m benchmarks.gpu.orchestrate "$PHASE" --budget "$LEFT" "$@"
rc=$?
cp "$BENCH_WORK/results.jsonl" "$OUT/results.jsonl" 2>/dev/null
tar -C "$BENCH_WORK" -czf "$OUT/logs.tgz" logs 2>/dev/null
exit $rc
