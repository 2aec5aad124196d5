"""A real Prometheus (Debian package `prometheus`, /usr/bin/prometheus) for the observability tests.

Started per test module on a free loopback port with a temp config and TSDB; it scrapes what the test
points it at and is stopped (and its data deleted) afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import yaml

from tests.conftest import LOG_DIR, eventually, free_port


def binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    assert path, f"{name} not found: SETUP_TEST_TOOLS=1 scripts/setup.sh installs Debian's prometheus"
    return path


class Prometheus:
    def __init__(self, config: dict, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"prometheus-{self.port}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [binary("prometheus"), f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=10)
        if not eventually(self._ready, timeout=30, interval=0.1):
            self.stop()
            raise RuntimeError(f"prometheus did not start:\n{self.log_path.read_text()[-3000:]}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            return self.client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params) -> dict:
        """GET /api/v1/<path>; the JSON body whatever the status (errors carry errorType)."""
        return self.client.get(f"/api/v1/{path}", params=params).json()

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query that must parse and evaluate; its result vector."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = self.api("query", **params)
        assert body["status"] == "success", f"{expr}\n-> {body}"
        return body["data"]["result"]

    def value(self, expr: str, at: float | None = None) -> float:
        result = self.query(expr, at)
        assert len(result) == 1, f"{expr} -> {result}"
        return float(result[0]["value"][1])

    def targets_up(self) -> bool:
        active = self.api("targets")["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
