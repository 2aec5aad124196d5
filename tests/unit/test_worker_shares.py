"""Engine-wide bounds are split across the shim's worker processes (Settings.per_worker): each
worker dispatches on its own, so a bound held whole by every worker would let the engine see N
times what the operator configured (issue 11: small requests waited behind 4x the bulk budget)."""

from server.settings import Settings


def test_engine_token_budget_is_split_across_workers():
    s = Settings(workers=4, engine_token_budget=16384)
    assert s.per_worker().engine_token_budget_resolved == 4096
    assert Settings(workers=3, engine_token_budget=1000).per_worker().engine_token_budget == 334


def test_auto_engine_token_budget_is_one_step_for_the_whole_engine():
    s = Settings(workers=4, max_num_batched_tokens=32768)
    assert s.engine_token_budget_resolved == 32768
    assert s.per_worker().engine_token_budget_resolved == 8192


def test_one_worker_keeps_the_whole_budget():
    s = Settings(workers=1, engine_token_budget=16384)
    assert s.per_worker().engine_token_budget_resolved == 16384


def test_engines_sharing_a_gpu_share_its_one_step_of_budget():
    """The budget bounds the bulk tokens in the GPU's steps; two engines on one GPU each holding
    a whole step put two steps of bulk ahead of a small request (mixed traffic measured it)."""
    s = Settings(engines=2, engines_per_gpu=2, max_num_batched_tokens=32768)
    assert s.engine_token_budget_resolved == 16384  # per engine: one step for the GPU
    assert Settings(engines=2, max_num_batched_tokens=32768).engine_token_budget_resolved == 32768
    # an explicit budget is the operator's, per engine as documented
    assert Settings(engines=2, engines_per_gpu=2, engine_token_budget=8000).engine_token_budget_resolved == 8000


def test_engines_sharing_a_gpu_admit_and_saturate_as_that_one_gpu():
    """Four engines on one GPU serve the bulk tokens of one (benchmarks/RESULTS.md): admission
    bounds and the autoscaling signal's capacity count that GPU once, so the HPA's saturation
    reads the same whether the launcher runs one engine or four on it; two GPUs count twice."""
    one = Settings(workers=2, max_inflight_pairs=4096, max_inflight_tokens=100_000)
    shared = Settings(workers=2, engines=4, engines_per_gpu=4, max_inflight_pairs=4096,
                      max_inflight_tokens=100_000)
    two_gpus = Settings(workers=2, engines=8, engines_per_gpu=4, max_inflight_pairs=4096,
                        max_inflight_tokens=100_000)
    assert (one.capacity_units, shared.capacity_units, two_gpus.capacity_units) == (1, 1, 2)
    for s, gpus in ((one, 1), (shared, 1), (two_gpus, 2)):
        w = s.per_worker()
        assert (w.max_inflight_pairs, w.max_inflight_tokens) == (4096 * gpus // 2, 100_000 * gpus // 2)

