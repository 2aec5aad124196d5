"""Deterministic mode (the default) on the CPU build, through the real vLLM: the same pair gets
the same score, bit for bit, scored alone, in a batch of 64 and among 32 concurrent requests of
other traffic; and the score cache hands out exactly what a recomputation gives.

On this build vLLM's forward pass is batch-invariant in fp32 for one request against another
(raw logits identical alone and in a batch, every time); what is not is vLLM's own sigmoid,
vectorised over the batch: some pairs come out 1 ulp apart alone and in a batch. Deterministic
mode takes the logit and computes P(yes) in the shim; the second test shows the drift it removes.
Under concurrent load the CPU build is bit-identical in most probes but not all: in 1 of 38
probes of 64 pairs (dev VM) one logit came out 1 ulp off (9.5e-7 at -4.6). VLLM_BATCH_INVARIANT,
vLLM's fix for that on GPUs, crashes the CPU build, so under load the test allows one such pair
(benchmarks/RESULTS.md, "Deterministic scores").

That forward-pass invariance is a property of the kernels vLLM's CPU build picks for the CPU, not a
promise: the earlier CI machines had it; an AVX2-only AMD EPYC does not (a prompt computed in a
batch differs from the same prompt alone in the last digits of its logit: 14 of 64 prompts, up to
6.7e-6, measured with /classify directly). The ISA is the likely difference, so without AVX-512 the
bit-identical assertions become bounds on the drift and the figures are printed; with it they stay
exact."""

import time
from pathlib import Path

import httpx
import pytest

from benchmarks.determinism import (
    compare,
    fixed_pairs,
    score_alone,
    score_batch,
    score_under_load,
)
from server.settings import Settings
from tests.conftest import MODEL_NAME

pytestmark = pytest.mark.engine

# The CPU build's forward pass is batch-invariant with AVX-512 kernels (module docstring).
EXACT = "avx512f" in Path("/proc/cpuinfo").read_text()
# a score's drift from fp32 reassociation of one logit (6.7e-6 at most seen on AVX2)
ROUNDING = 1e-5


def test_same_pairs_score_identically_alone_in_a_batch_of_64_and_under_load(service):
    query, docs = fixed_pairs(64)
    assert len(docs) == 64
    with httpx.Client(timeout=120) as client:
        alone = score_alone(client, service.url, MODEL_NAME, query, docs)
        # The batch is bulk work: right after interactive requests the shim would cut it to the
        # engine token budget (bulk_split_to_budget), i.e. spread it over engine calls like the
        # under-load case below. Once interactive_memory_s has passed it goes as one call, which
        # is what this step measures. (On the GPU the cut batch is bit-identical too: the
        # determinism probe, benchmarks/RESULTS.md session 5.)
        time.sleep(Settings.model_fields["interactive_memory_s"].default + 0.5)
        batch = score_batch(client, service.url, MODEL_NAME, query, docs)
    loaded = score_under_load(service.url, MODEL_NAME, query, docs, concurrency=32,
                              noise_docs=8, noise_words=120)
    in_batch, under_load = compare(alone, batch), compare(alone, loaded)
    print(f"AVX-512: {EXACT}; batch vs alone {in_batch}; under load vs alone {under_load}")
    if EXACT:
        assert in_batch["identical"] == 64
        assert under_load["identical"] >= 63 and under_load["max_abs_drift"] < 1e-6
    else:
        assert in_batch["max_abs_drift"] < ROUNDING and under_load["max_abs_drift"] < ROUNDING
    assert len(set(alone)) > 32  # real, varied scores, not a constant


def test_without_deterministic_mode_a_batch_rounds_some_scores_differently(extra_shim):
    """Through a shim with deterministic mode off, the same 64 pairs: vLLM's sigmoid over the
    batch (SIMD) and over one element (scalar) differ in the last bit for a few of them (for ~3.5%
    of random values, with AVX2 and AVX-512 alike; 2 of these 64 on the dev VM). The shim's
    canary passes in this mode too (the extra shim is only returned once /ready says so)."""
    shim = extra_shim(deterministic="false")
    assert httpx.get(shim.url + "/ready", timeout=5).status_code == 200
    query, docs = fixed_pairs(64)
    with httpx.Client(timeout=120) as client:
        alone = score_alone(client, shim.url, MODEL_NAME, query, docs)
        time.sleep(Settings.model_fields["interactive_memory_s"].default + 0.5)  # one call (above)
        batch = score_batch(client, shim.url, MODEL_NAME, query, docs)
    drift = compare(alone, batch)
    assert drift["identical"] < len(docs)
    assert 0 < drift["max_abs_drift"] < 1e-6  # rounding, not a different computation


def test_score_cache_returns_what_a_recomputation_gives(service, extra_shim):
    """In deterministic mode a cached score is the score: computed in a batch of 64 and cached,
    then asked for alone, it equals the same pair recomputed alone by a shim without a cache.
    (Without deterministic mode the cache returns the first value computed, which may be the
    batch's rounding; see docs/deployment.md.)"""
    cached = extra_shim(score_cache="true")
    query, docs = fixed_pairs(64, seed=31)
    with httpx.Client(timeout=120) as client:
        score_batch(client, cached.url, MODEL_NAME, query, docs)            # computes and caches
        hits = score_alone(client, cached.url, MODEL_NAME, query, docs[:16])  # answered from the cache
        fresh = score_alone(client, service.url, MODEL_NAME, query, docs[:16])
    if EXACT:
        assert hits == fresh
    else:  # the cached score was computed in the batch (module docstring)
        assert max(abs(a - b) for a, b in zip(hits, fresh)) < ROUNDING
    metrics = httpx.get(cached.url + "/metrics", timeout=5).text
    hit_lines = [line for line in metrics.splitlines() if line.startswith("reranker_score_cache_hits_total")]
    assert hit_lines and float(hit_lines[0].split()[-1]) >= 16
