# Two commands (see README):  make serve   |   make test
# make serve MODEL=Qwen/Qwen3-Reranker-0.6B   (or a local path; default: offline demo model)
MODEL ?=
PORT ?= 8000
ARGS ?=

.PHONY: serve test check setup
setup:
	./scripts/setup.sh

serve: setup
	.venv/bin/python -m launcher --port $(PORT) $(if $(MODEL),--model $(MODEL)) $(ARGS)

test:
	SETUP_TEST_TOOLS=1 ./scripts/setup.sh
	.venv/bin/ruff check .
	.venv/bin/python -m mypy
	# the fast in-process layer first (no vLLM): a broken core fails in a minute, not after the suite
	timeout -k 60 600 .venv/bin/python -m pytest -q -x -n 2 tests/inprocess
	# two workers, the suite shared out by tests/conftest.py (the shared vLLM's modules on one, the
	# rest, those with vLLMs of their own first, on the other); a safety net: a hung run fails in
	# 50 minutes instead of eating CI's 90
	timeout -k 60 3000 .venv/bin/python -m pytest -q -rs -n 2 --dist loadgroup --no-loadscope-reorder \
		--durations=25 --ignore=tests/inprocess $(ARGS)

# The quick loop while coding (about a minute once .venv exists): lint, types, and the tests that
# need neither vLLM nor the system packages the full suite installs (nginx, redis, chromium, helm).
check: setup
	.venv/bin/ruff check .
	.venv/bin/python -m mypy
	timeout -k 60 600 .venv/bin/python -m pytest -q -x -p no:cacheprovider tests/unit tests/inprocess
