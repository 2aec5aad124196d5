#!/bin/bash
# Seconds from `python -m launcher` to the shim's /ready, for a list of configurations, in order,
# sharing one compile cache (so the first is cold and the rest are restarts that reuse it).
# Run after `run.sh <any phase>` has installed the kit and built the 0.6b model on the device.
#   bash benchmarks/gpu/startup.sh default default inproc-engine
# inproc-engine = VLLM_ENABLE_V1_MULTIPROCESSING=0 (vLLM's engine core in the API-server process:
# one Python start-up instead of two). Prints JSON lines.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
export VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-/tmp/bench/startup-cache/vllm}
MODEL=${BENCH_MODEL_DIR:-/tmp/bench/models/qwen3-reranker-0.6b}
OUTDIR=${OUT:-/tmp/bench/out}; mkdir -p "$OUTDIR"
for cfg in "$@"; do
  env_extra=()
  [ "$cfg" = inproc-engine ] && env_extra=(VLLM_ENABLE_V1_MULTIPROCESSING=0)
  start=$(date +%s.%N)
  env "${env_extra[@]}" setsid python3 -m launcher --model "$MODEL" --rate-limit "" \
    --max-model-len 8192 > "$OUTDIR/startup-$cfg-$(date +%s).log" 2>&1 &
  pid=$!
  until python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=1)" 2>/dev/null; do
    kill -0 $pid 2>/dev/null || { echo "{\"kind\":\"startup\",\"config\":\"$cfg\",\"error\":\"launcher exited\"}"; break; }
    sleep 0.25
  done
  secs=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
  # one scored request proves the service works in this configuration
  ok=$(python3 -c "
import json, urllib.request
r = urllib.request.Request('http://127.0.0.1:8000/v1/rank', data=json.dumps({'query': 'q', 'docs': ['a', 'b']}).encode(), headers={'content-type': 'application/json'})
print(len(json.load(urllib.request.urlopen(r, timeout=30))['results']))" 2>/dev/null)
  echo "{\"kind\":\"startup\",\"config\":\"$cfg\",\"seconds_to_ready\":$secs,\"scored_docs\":\"$ok\",\"gpu\":\"$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)\"}"
  kill -TERM $pid; wait $pid 2>/dev/null
done
