# syntax=docker/dockerfile:1
# The service image: vLLM's CUDA image + this project. One container runs the launcher (mode all):
# vLLM on 127.0.0.1:8001, the rerank API on 0.0.0.0:8000, supervised and drained together.
#
#   docker build -t qwen3-rerank-service .
#   docker run --gpus all -p 8000:8000 --stop-timeout 150 \
#     -e RERANKER_MODEL=Qwen/Qwen3-Reranker-0.6B -v reranker-cache:/var/lib/reranker/cache qwen3-rerank-service
#
# Arguments after the image name are launcher flags (`... qwen3-rerank-service --max-model-len 4096`).
# `docker stop` waits only 10 s by default: give it the drain time (--stop-timeout / `docker stop -t`,
# compose `stop_grace_period`) >= drain window + drain timeout + vLLM shutdown timeout + margin
# (docs/deployment.md, "Drain timing").

# Pinned by tag to the vLLM release of pyproject's `gpu` extra (vllm==0.26.0). Tags can be re-pushed:
# in production pin the digest too, e.g. FROM vllm/vllm-openai:v0.26.0@sha256:<digest>.
FROM vllm/vllm-openai:v0.26.0

# Unprivileged user; group 0 and group-writable state so an arbitrary UID (OpenShift) works as well.
RUN useradd --uid 10001 --gid 0 --home-dir /var/lib/reranker --no-create-home --shell /usr/sbin/nologin reranker \
    && mkdir -p /var/lib/reranker/cache \
    && chown -R 10001:0 /var/lib/reranker \
    && chmod -R g=u /var/lib/reranker

# This project only. Its dependencies are installed as far as the image lacks them (limits, orjson,
# python-json-logger, pydantic-settings, PyJWT, ...), and never by replacing a package the vLLM image
# already has: every installed distribution is pinned to its present version (-c), so a conflict fails
# the build instead of silently changing vLLM's environment.
COPY pyproject.toml README.md /tmp/reranker-src/
COPY server /tmp/reranker-src/server
COPY launcher /tmp/reranker-src/launcher
COPY offline /tmp/reranker-src/offline
RUN python3 -m pip list --format=freeze > /tmp/image-constraints.txt \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir -c /tmp/image-constraints.txt /tmp/reranker-src \
    && python3 -c "import launcher.cli, server.app, offline.cli" \
    && rm -rf /tmp/reranker-src /tmp/image-constraints.txt

# Bytecode for every installed package, written now as root: vLLM's image installs with uv, which
# writes no .pyc, and user 10001 cannot write any, so every interpreter would compile vLLM, torch and
# transformers from source at each start (+9.6 s per import of vLLM's API server, measured with
# benchmarks/import_time.py; a vLLM start runs two interpreters). A few files in third-party
# packages are not Python 3 (test fixtures, templates); compileall reports them and they are never
# imported, so its exit status is ignored.
RUN python3 -m compileall -q -j 0 $(python3 -c "import site; print(' '.join(site.getsitepackages()))") || true

# vLLM's model-info inspection of the Qwen3 classes, made once here (it needs no GPU): at start the
# launcher copies it into a cache volume that lacks it (RERANKER_CACHE_SEED), so a new pod on a
# fresh volume skips a subprocess that imports vLLM again (10-30 s of a cold start). The result is
# keyed by the model source's hash, so vLLM itself refuses a stale one. Best effort: an image whose
# vLLM cannot inspect without a GPU still builds, and its pods inspect at their first start.
RUN python3 -m launcher.prewarm --cache-dir /opt/reranker/cache-seed || echo "model-info seed not made"

# Caches (model downloads, vLLM's model-info inspection, torch.compile / CUDA graphs, Triton and
# inductor kernels) in one place: mount a volume at /var/lib/reranker/cache to keep warm starts
# across container restarts. The launcher derives VLLM_CACHE_ROOT=<RERANKER_CACHE_DIR>/vllm and
# the compile caches under it.
ENV HOME=/var/lib/reranker \
    HF_HOME=/var/lib/reranker/cache/huggingface \
    RERANKER_CACHE_DIR=/var/lib/reranker/cache \
    RERANKER_CACHE_SEED=/opt/reranker/cache-seed \
    XDG_CACHE_HOME=/var/lib/reranker/cache/xdg \
    PYTHONUNBUFFERED=1 \
    RERANKER_HOST=0.0.0.0 \
    RERANKER_PORT=8000

# The offline demo model (RERANKER_MODEL empty) is built under the working directory.
WORKDIR /var/lib/reranker
USER 10001

EXPOSE 8000

# Docker's health = readiness: 200 once vLLM has loaded the model, 503 while it (re)starts or drains.
# Python, not curl: the base image does not promise curl. start-period covers download + load +
# compile (the launcher's own RERANKER_VLLM_STARTUP_TIMEOUT defaults to 30 min).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('RERANKER_PORT', '8000'), timeout=4)"]

# SIGTERM starts the drain (readiness 503, in-flight requests finish, then vLLM stops).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "-m", "launcher"]
CMD []
