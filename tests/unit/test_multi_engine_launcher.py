"""Several engines per pod (issue 16), the launcher's side: which vLLM processes start with which
flags, ports and GPUs, the checks before they start, and the supervision of each on its own.
The engines here are stand-ins (tiny HTTP servers answering /health): what is tested is the
launcher, and a real vLLM pair is in tests/integration/test_multi_engine.py."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import httpx
import pytest

from launcher import preflight
from launcher.cli import parse
from launcher.supervise import Supervisor
from launcher.vllm_args import cpu_binds, engine_commands, vllm_environment
from server.settings import Settings
from tests.conftest import free_port, free_ports

ARCH = ["Qwen3ForCausalLM"]


def flag(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_engines_mode_starts_one_vllm_per_gpu_on_consecutive_ports():
    s = parse(["--model", "/m", "--engines", "4", "--vllm-port", "9001"])
    commands = engine_commands(s, ARCH, gpu=True, env={})
    assert [flag(cmd, "--port") for cmd, _ in commands] == ["9001", "9002", "9003", "9004"]
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in commands] == ["0", "1", "2", "3"]
    assert all("--data-parallel-size" not in cmd for cmd, _ in commands)
    assert s.upstream_urls == [f"http://127.0.0.1:{p}" for p in range(9001, 9005)]


def test_each_engine_gets_its_tensor_parallel_group_of_the_visible_gpus():
    s = parse(["--model", "/m", "--engines", "2", "--tensor-parallel-size", "2"])
    commands = engine_commands(s, ARCH, gpu=True, env={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in commands] == ["4,5", "6,7"]
    assert all(flag(cmd, "--tensor-parallel-size") == "2" for cmd, _ in commands)


def test_engines_on_a_cpu_are_processes_on_cpus_of_their_own():
    commands = engine_commands(parse(["--model", "/m", "--engines", "2"]), ARCH, gpu=False, env={})
    assert len({flag(cmd, "--port") for cmd, _ in commands}) == 2
    assert all("CUDA_VISIBLE_DEVICES" not in env for _, env in commands)
    binds = [env.get("VLLM_CPU_OMP_THREADS_BIND") for _, env in commands]
    if len(os.sched_getaffinity(0)) >= 2:
        first, second = ({int(c) for c in b.split(",")} for b in binds)
        assert first and second and not first & second
    # each engine's core runs in a process of its own (in-process cores served 2.5x less)
    s = parse(["--model", "/m", "--engines", "2"])
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in vllm_environment({}, gpu=False, settings=s)
    assert cpu_binds(2, cpus=[0, 1, 2, 3, 4]) == ["0,1", "2,3"]
    assert cpu_binds(2, tp=2, cpus=list(range(8))) == ["0,1|2,3", "4,5|6,7"]
    assert cpu_binds(4, cpus=[0, 1]) == []  # fewer CPUs than engines: vLLM's own binding
    # an operator's own binding wins
    commands = engine_commands(parse(["--model", "/m", "--engines", "2"]), ARCH, gpu=False,
                               env={"VLLM_CPU_OMP_THREADS_BIND": "nobind"})
    assert [env for _, env in commands] == [{}, {}]


def test_one_engine_is_the_single_vllm_as_before():
    s = parse(["--model", "/m"])
    ((cmd, env),) = engine_commands(s, ARCH, gpu=True, env={})
    assert env == {} and flag(cmd, "--port") == "8001" and s.upstream_urls == ["http://127.0.0.1:8001"]


def test_data_parallel_mode_is_one_vllm_with_data_parallel_size():
    s = parse(["--model", "/m", "--engines", "4", "--multi-gpu-mode", "data-parallel"])
    ((cmd, env),) = engine_commands(s, ARCH, gpu=True, env={})
    assert flag(cmd, "--data-parallel-size") == "4" and env == {}
    assert s.upstream_urls == ["http://127.0.0.1:8001"]
    assert s.engine_weight == 4 and s.engine_count == 4  # its budget and slots are 4 engines'
    # on the CPU build its ranks need their own processes: the in-core shortcut is off
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in vllm_environment({}, gpu=False, settings=s)


def test_per_engine_capacity_settings_scale_with_the_engines():
    one = Settings(workers=1)
    four = Settings(workers=2, engines=4, max_inflight_pairs=1000, max_inflight_tokens=10)
    assert one.per_worker().max_inflight_pairs == one.max_inflight_pairs
    assert (four.per_worker().max_inflight_pairs, four.per_worker().max_inflight_tokens) == (2000, 20)


def test_shim_mode_takes_a_list_of_engine_urls():
    s = Settings(mode="shim", vllm_url="http://a:8001/, http://b:8001")
    assert s.upstream_urls == ["http://a:8001", "http://b:8001"] and s.engine_count == 2


def test_too_few_gpus_for_the_engines_is_one_line_before_anything_loads():
    s = parse(["--model", "/m", "--engines", "4", "--tensor-parallel-size", "2"])
    with pytest.raises(preflight.ConfigError, match=r"needs 8 GPUs, 2 visible \(0, 1\)"):
        preflight.check_gpus(s, gpu=True, env={"CUDA_VISIBLE_DEVICES": "0,1"})
    preflight.check_gpus(s, gpu=False)  # a CPU: nothing to check


def test_every_engine_port_is_checked_and_the_api_port_is_not_one_of_them():
    base = free_port()
    s = parse(["--model", "/m", "--engines", "3", "--vllm-port", str(base), "--port", str(base + 2),
               "--host", "127.0.0.1", "--vllm-host", "127.0.0.1"])
    with pytest.raises(preflight.ConfigError, match="engines' ports"):
        preflight.check_ports(s)


# --- supervision, with stand-in engines ---------------------------------------------------------
STAND_IN = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def run_supervised(sup: Supervisor, scenario) -> None:
    """Run the supervisor's loop here (it installs signal handlers: main thread only) while
    `scenario` drives it from a thread and sets sup.stopping when done."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=scenario)
    try:
        thread.start()
        assert sup.run() == 0
        thread.join()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_a_dead_engine_is_restarted_on_its_own_while_the_other_keeps_running():
    base = free_ports(2)
    settings = Settings(engines=2, vllm_port=base, vllm_restart_backoff=0.2, vllm_startup_timeout=30,
                        enforce_eager=True)  # nothing to compile: both start at once
    commands = [([sys.executable, "-c", STAND_IN, str(base + i)], {}) for i in range(2)]
    sup = Supervisor(settings, commands, with_shim=False)
    seen: dict = {}

    def scenario():
        try:
            deadline = time.monotonic() + 30
            while not all(e.state == "running" for e in sup.engines):
                assert time.monotonic() < deadline, [e.state for e in sup.engines]
                time.sleep(0.05)
            first, second = (e.proc.pid for e in sup.engines)
            sup.engines[1].proc.kill()
            while sup.engines[1].proc.pid == second or sup.engines[1].state != "running":
                assert time.monotonic() < deadline, sup.engines[1].state
                time.sleep(0.05)
            seen["pids"] = (first, second, *(e.proc.pid for e in sup.engines))
            seen["healthy"] = healthy(base) and healthy(base + 1)
            seen["budgets"] = [len(e.restarts.times) for e in sup.engines]
        finally:
            sup.stopping = True

    run_supervised(sup, scenario)
    first, second, first_now, second_now = seen["pids"]
    assert first_now == first and second_now != second  # only the dead one was replaced
    assert seen["healthy"] and seen["budgets"] == [0, 1]  # each engine spends its own budget
    assert all(e.proc.poll() is not None for e in sup.engines)  # both stopped on shutdown
    assert not healthy(base) and not healthy(base + 1)



def test_with_an_empty_compile_cache_engine_0_compiles_alone_then_the_others_start(tmp_path):
    """N engines compiling one graph into one cache directory at once race on its files."""
    base = free_ports(3)
    settings = Settings(engines=3, vllm_port=base, vllm_startup_timeout=30, cache_dir=str(tmp_path))
    slow = "import time; time.sleep(1.5)\n" + STAND_IN  # engine 0 takes a while to come up
    commands = [([sys.executable, "-c", slow if i == 0 else STAND_IN, str(base + i)], {}) for i in range(3)]
    sup = Supervisor(settings, commands, with_shim=False)
    seen: dict = {}

    def scenario():
        try:
            deadline = time.monotonic() + 30
            while sup.engines[0].state != "running":
                if sup.engines[0].state == "starting":  # engine 0 compiling: the others wait
                    seen.setdefault("held", [e.state for e in sup.engines[1:]])
                assert time.monotonic() < deadline
                time.sleep(0.02)
            up_at = time.monotonic()
            while not all(e.state == "running" for e in sup.engines):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            seen["later"] = all(e.started_at >= up_at - 0.6 for e in sup.engines[1:])
        finally:
            sup.stopping = True

    run_supervised(sup, scenario)
    assert seen["held"] == ["held", "held"] and seen["later"], seen
    # a warm cache: every engine starts at once
    (tmp_path / "vllm" / "torch_compile_cache").mkdir(parents=True)
    assert not Supervisor(settings, commands, with_shim=False)._cold_compile_cache()


def test_engines_sharing_a_gpu_split_its_memory_and_need_fewer_gpus():
    s = parse(["--model", "/m", "--engines", "4", "--engines-per-gpu", "2"])
    commands = engine_commands(s, ARCH, gpu=True, env={"CUDA_VISIBLE_DEVICES": "2,3"},
                               kv_cache_bytes=12 << 30)
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in commands] == ["2", "2", "3", "3"]
    assert {flag(cmd, "--gpu-memory-utilization") for cmd, _ in commands} == {"0.45"}
    # a KV cache of its own each: no profiling of memory another engine is taking, and no
    # persisted one-engine start-up plan (keyed without gpu_memory_utilization) sizing it
    assert {flag(cmd, "--kv-cache-memory-bytes") for cmd, _ in commands} == {str(12 << 30)}
    assert len({flag(cmd, "--port") for cmd, _ in commands}) == 4
    preflight.check_gpus(s, gpu=True, env={"CUDA_VISIBLE_DEVICES": "2,3"})  # 2 GPUs are enough
    with pytest.raises(preflight.ConfigError, match="needs 2 GPUs, 1 visible"):
        preflight.check_gpus(s, gpu=True, env={"CUDA_VISIBLE_DEVICES": "0"})
    with pytest.raises(ValueError, match="engines_per_gpu > 1 needs tensor_parallel_size 1"):
        Settings(engines=2, engines_per_gpu=2, tensor_parallel_size=2)


def test_engines_sharing_a_gpu_start_together():
    """Each engine on a shared GPU has a fixed KV cache, so none waits for another (a warm
    cache: all at once; a cold one still lets engine 0 compile alone)."""
    base = free_ports(3)
    settings = Settings(engines=3, engines_per_gpu=3, vllm_port=base, vllm_startup_timeout=30,
                        enforce_eager=True)  # no compile-cache hold
    slow = "import time; time.sleep(1.0)\n" + STAND_IN
    commands = [([sys.executable, "-c", slow, str(base + i)], {}) for i in range(3)]
    sup = Supervisor(settings, commands, with_shim=False)

    def scenario():
        try:
            deadline = time.monotonic() + 30
            while not all(e.state == "running" for e in sup.engines):
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            sup.stopping = True

    run_supervised(sup, scenario)
    started = [e.started_at for e in sup.engines]
    assert max(started) - min(started) < 0.5, started


QWEN3_0_6B = {"num_hidden_layers": 28, "hidden_size": 1024, "intermediate_size": 3072,
              "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
              "vocab_size": 151669, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
QWEN3_8B = {**QWEN3_0_6B, "num_hidden_layers": 36, "hidden_size": 4096, "intermediate_size": 12288,
            "num_attention_heads": 32, "tie_word_embeddings": False}
H200 = 143_771_000_832


def test_a_shared_gpu_engine_gets_a_few_steps_of_kv_cache_within_its_share():
    from launcher.gpu import GIB, ModelShape
    from launcher.vllm_args import shared_kv_cache_bytes

    shape = ModelShape.from_config(QWEN3_0_6B)
    assert shape.kv_bytes_per_token(2) == 2 * 28 * 8 * 128 * 2  # 112 KiB a token
    assert 1.1 * GIB < shape.weight_bytes(2) < 1.3 * GIB       # 0.6B parameters in bf16
    s = Settings(model="/m", engines=4, engines_per_gpu=4, max_model_len=8192)
    kv = shared_kv_cache_bytes(s, total_bytes=H200, config=QWEN3_0_6B)
    assert kv == 4 * 32768 * shape.kv_bytes_per_token(2)        # four 32k-token steps: 14 GiB
    # what four of them take stays inside 0.9 of the GPU
    assert 4 * (kv + shape.weight_bytes(2) + 6 * GIB) < 0.9 * H200
    # an 8B model: two engines get less than four steps (their share is the limit)...
    s8 = Settings(model="/m", engines=2, engines_per_gpu=2)
    kv8 = shared_kv_cache_bytes(s8, total_bytes=H200, config=QWEN3_8B)
    big = ModelShape.from_config(QWEN3_8B)
    assert 32768 * big.kv_bytes_per_token(2) <= kv8
    assert 2 * (kv8 + big.weight_bytes(2) + 6 * GIB) <= 0.9 * H200 + 1
    # ...and eight do not fit: a one-line start-up error that says what to change
    with pytest.raises(preflight.ConfigError, match="8 engines do not fit one GPU .* lower --engines-per-gpu"):
        shared_kv_cache_bytes(Settings(model="/m", engines=8, engines_per_gpu=8),
                              total_bytes=H200, config=QWEN3_8B)


def test_an_explicit_kv_cache_size_wins_and_reaches_vllm():
    s = parse(["--model", "/m", "--engines", "2", "--engines-per-gpu", "2",
               "--kv-cache-memory-bytes", str(5 << 30)])
    commands = engine_commands(s, ARCH, gpu=True, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert {flag(cmd, "--kv-cache-memory-bytes") for cmd, _ in commands} == {str(5 << 30)}


def test_async_scheduling_is_on_with_a_gpu_and_can_be_turned_off():
    on_gpu = engine_commands(parse(["--model", "/m"]), ARCH, gpu=True, env={})[0][0]
    assert "--async-scheduling" in on_gpu
    assert "--async-scheduling" not in engine_commands(parse(["--model", "/m"]), ARCH, gpu=False)[0][0]
    off = engine_commands(parse(["--model", "/m", "--no-async-scheduling"]), ARCH, gpu=True, env={})[0][0]
    assert "--no-async-scheduling" in off and "--async-scheduling" not in off


def test_mps_daemon_commands_and_the_engines_environment(tmp_path):
    from launcher import gpu

    env = gpu.mps_env(str(tmp_path))
    assert env == {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "mps" / "pipe"),
                   "CUDA_MPS_LOG_DIRECTORY": str(tmp_path / "mps" / "log")}
    assert gpu.mps_start_command() == ["nvidia-cuda-mps-control", "-d"]
    assert gpu.mps_stop_command() == (["nvidia-cuda-mps-control"], "quit\n")
    s = Settings(model="/m", cuda_mps=True, cache_dir=str(tmp_path))
    engine_env = vllm_environment({}, gpu=True, settings=s)
    assert {k: engine_env[k] for k in env} == env  # every engine joins the launcher's daemon
    assert "CUDA_MPS_PIPE_DIRECTORY" not in vllm_environment({}, gpu=True, settings=Settings(model="/m"))


def test_mps_wanted_but_missing_gives_up_with_one_line(tmp_path, monkeypatch):
    """Where the driver utilities are absent the launcher stops at once (exit 1) and says why,
    instead of starting engines that silently run without MPS."""
    from launcher import supervise

    monkeypatch.setattr(supervise, "gpu_visible", lambda: True)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control on it
    port = free_ports(1)
    settings = Settings(vllm_port=port, cuda_mps=True, cache_dir=str(tmp_path))
    sup = Supervisor(settings, [([sys.executable, "-c", STAND_IN, str(port)], {})], with_shim=False)
    assert sup.run() == 1
    assert all(e.proc is None for e in sup.engines)  # no engine was started


def test_an_engine_killed_after_it_answered_but_before_the_launcher_saw_it_healthy_is_restarted(tmp_path):
    """The shim polls vLLM itself and can verify it and send it work before the launcher's loop
    (every 0.5 s) sees it healthy; a crash in that gap is a crash, not a failed first start
    (which would make the launcher give up: exit 1). Stand-in engine: the first time, it prints
    vLLM's access-log line for an answered request and SIGKILLs itself at once."""
    port = free_ports(1)
    marker = tmp_path / "ran-once"
    crash_once = (f"import os, pathlib, signal, sys\nm = pathlib.Path({str(marker)!r})\n"
                  "if not m.exists():\n"
                  "    m.touch()\n"
                  "    print('INFO:     127.0.0.1:4 - \"POST /classify HTTP/1.1\" 200 OK', flush=True)\n"
                  "    os.kill(os.getpid(), signal.SIGKILL)\n" + STAND_IN)
    settings = Settings(vllm_port=port, vllm_restart_backoff=0.2, vllm_startup_timeout=30)
    sup = Supervisor(settings, [([sys.executable, "-c", crash_once, str(port)], {})], with_shim=False)
    seen: dict = {}

    def scenario():
        try:
            deadline = time.monotonic() + 30
            while sup.engines[0].state != "running":
                assert time.monotonic() < deadline, sup.engines[0].state
                time.sleep(0.05)
            seen["restarts"] = len(sup.engines[0].restarts.times)
            seen["healthy"] = healthy(port)
        finally:
            sup.stopping = True

    run_supervised(sup, scenario)  # asserts run() == 0: it did not give up
    assert marker.exists() and seen == {"restarts": 1, "healthy": True}
