"""deploy/systemd: the units start what the docs say, restart on failure, and give the drain enough time.

No systemd is running here: the unit files are parsed, their ExecStart flags are checked against the real
launcher (`--help` with the same flags), and `systemd-analyze verify` runs when the binary exists.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import Settings
from tests.conftest import ROOT

UNITS = ROOT / "deploy" / "systemd"
MAIN = UNITS / "reranker.service"
SHIM = UNITS / "reranker-shim@.service"
ENV_FILE = UNITS / "reranker.env"
NGINX_CONF = ROOT / "deploy" / "nginx" / "reranker.conf"
# The launcher gives the shim drain_window + drain_timeout + 5 s and vLLM shutdown_timeout + 15 s before
# it SIGKILLs either (launcher/supervise.py); systemd's SIGKILL must come after both.
LAUNCHER_SLACK_S = 20
MARGIN_S = 10


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit syntax: [Section], Key=Value (repeatable, kept in order), # and ; comments,
    backslash continuations. An empty assignment resets the list, as systemd does."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: assignment before any section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not Key=Value: {line}"
        key, value = key.strip(), value.strip()
        if value == "":
            current[key] = []
        else:
            current.setdefault(key, []).append(value)
    return sections


def one(unit: dict, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}: expected exactly one value, got {values}"
    return values[0]


def seconds(span: str) -> float:
    """A systemd time span: `150`, `150s`, `2min 30s`, `1h`, `infinity`."""
    if span == "infinity":
        return float("inf")
    units = {"": 1, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60,
             "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600, "ms": 0.001, "msec": 0.001}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), f"bad time span {span!r}"
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def env_file() -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments and blanks skipped)."""
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"reranker.env: bad line {line!r}"
        values[key] = value.strip().strip('"').strip("'")
    return values


def example_settings(monkeypatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("RERANKER_")]:
        monkeypatch.delenv(key)
    for key, value in env_file().items():
        monkeypatch.setenv(key, value)
    return Settings()


def exec_argv(unit: dict) -> list[str]:
    return shlex.split(one(unit, "Service", "ExecStart"))


@pytest.fixture(scope="module")
def main_unit():
    return parse_unit(MAIN)


@pytest.fixture(scope="module")
def shim_unit():
    return parse_unit(SHIM)


def test_main_unit_runs_the_launcher_in_mode_all(main_unit):
    argv = exec_argv(main_unit)
    assert argv[0].startswith("/") and argv[1:3] == ["-m", "launcher"]
    assert "--mode" not in argv or argv[argv.index("--mode") + 1] == "all"


def test_shim_template_runs_mode_shim_on_the_instance_port(shim_unit):
    argv = exec_argv(shim_unit)
    assert argv[1:3] == ["-m", "launcher"]
    assert argv[argv.index("--mode") + 1] == "shim"
    # the flag beats a RERANKER_PORT from the env file (EnvironmentFile= overrides Environment=)
    assert argv[argv.index("--port") + 1] == "%i"
    assert "RERANKER_PORT=%i" in shim_unit["Service"]["Environment"]


@pytest.mark.parametrize("unit_path,instance", [(MAIN, "8000"), (SHIM, "8002")], ids=["main", "shim"])
def test_exec_start_flags_are_accepted_by_the_launcher(unit_path, instance):
    argv = [a.replace("%i", instance) for a in exec_argv(parse_unit(unit_path))]
    result = subprocess.run([sys.executable, *argv[1:], "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("unit_path", [MAIN, SHIM], ids=["main", "shim"])
def test_units_restart_on_failure_and_stop_with_sigterm_to_the_main_process(unit_path):
    unit = parse_unit(unit_path)
    assert one(unit, "Service", "Restart") == "on-failure"
    assert seconds(one(unit, "Service", "RestartSec")) >= 1
    assert one(unit, "Service", "KillSignal") in ("SIGTERM", "TERM", "15")
    # mixed: only the launcher gets SIGTERM and orders the drain; control-group would signal vLLM too
    assert one(unit, "Service", "KillMode") == "mixed"
    assert "-/etc/reranker/reranker.env" in unit["Service"]["EnvironmentFile"]
    assert int(one(unit, "Service", "LimitNOFILE")) >= 65536
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_main_unit_stop_timeout_covers_the_whole_drain(main_unit, monkeypatch):
    s = example_settings(monkeypatch)
    needed = s.drain_window + s.drain_timeout + s.vllm_shutdown_timeout + LAUNCHER_SLACK_S + MARGIN_S
    timeout = seconds(one(main_unit, "Service", "TimeoutStopSec"))
    assert timeout >= needed, (f"TimeoutStopSec {timeout} < drain window {s.drain_window} + drain timeout "
                               f"{s.drain_timeout} + vLLM shutdown {s.vllm_shutdown_timeout} + "
                               f"{LAUNCHER_SLACK_S} + margin {MARGIN_S}")
    assert timeout != float("inf")


def test_shim_stop_timeout_covers_its_drain(shim_unit, monkeypatch):
    s = example_settings(monkeypatch)
    timeout = seconds(one(shim_unit, "Service", "TimeoutStopSec"))
    assert s.drain_window + s.drain_timeout + MARGIN_S <= timeout != float("inf")


def test_shims_start_after_and_stop_before_the_engine(shim_unit):
    unit = shim_unit["Unit"]
    assert "reranker.service" in " ".join(unit["After"]).split()
    assert "reranker.service" in " ".join(unit.get("PartOf", [])).split()


@pytest.mark.parametrize("unit_path", [MAIN, SHIM], ids=["main", "shim"])
def test_units_run_as_a_dedicated_user_with_hardening(unit_path):
    service = parse_unit(unit_path)["Service"]
    assert one({"Service": service}, "Service", "User") not in ("root", "0")
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"][0] in ("full", "strict", "yes")
    assert service["PrivateTmp"] == ["yes"]


def test_main_unit_keeps_gpu_devices_reachable(main_unit):
    service = main_unit["Service"]
    # each of these hides /dev/nvidia* or breaks CUDA / Triton JIT
    for key in ("PrivateDevices", "ProtectClock", "MemoryDenyWriteExecute"):
        assert service.get(key, ["no"]) == ["no"], key
    assert "DeviceAllow" not in service and "DevicePolicy" not in service
    assert "SystemCallFilter" not in service


def test_example_env_file_holds_only_known_settings_with_valid_values(monkeypatch):
    fields = {f"RERANKER_{name.upper()}" for name in Settings.model_fields}
    unknown = [k for k in env_file() if k.startswith("RERANKER_") and k not in fields]
    assert not unknown, f"not fields of server.settings.Settings: {unknown}"
    s = example_settings(monkeypatch)  # raises on a bad value
    assert s.host == "127.0.0.1" and "127.0.0.1/32" in s.trusted_proxies


def test_nginx_upstream_points_at_the_main_shim_port(monkeypatch):
    port = example_settings(monkeypatch).port
    upstream = re.search(r"upstream reranker_shims \{(.*?)\}", NGINX_CONF.read_text(), re.S).group(1)
    assert f"server 127.0.0.1:{port} " in upstream


def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed; the parsed checks above still ran")
    # verify insists that ExecStart's binary exists: point it at this interpreter, change nothing else
    for src, name in ((MAIN, "reranker.service"), (SHIM, "reranker-shim@.service"),
                      (SHIM, "reranker-shim@8002.service")):
        text = src.read_text()
        interpreter = exec_argv(parse_unit(src))[0]
        (tmp_path / name).write_text(text.replace(interpreter, sys.executable))
    result = subprocess.run([tool, "verify", "--man=no", str(tmp_path / "reranker.service"),
                             str(tmp_path / "reranker-shim@8002.service")],
                            capture_output=True, text=True, timeout=120)
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if "reranker" in line or str(tmp_path) in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr
