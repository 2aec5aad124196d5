"""The playground's static page, without an engine: served as HTML at / and /playground, its own
assets only (works offline), its config endpoint, the off switch, and the wheel ships the files.

The app is built without running its lifespan, so no engine or tokenizer is involved: these
routes never touch either. The browser tests (tests/browser) drive the page against real vLLM.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile

from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.conftest import ROOT

PAGE_DIR = ROOT / "server" / "playground"
ASSETS = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}


def client(**settings) -> TestClient:
    return TestClient(create_app(Settings(**settings)))


def test_page_is_html_at_root_and_at_playground():
    c = client()
    page = (PAGE_DIR / "index.html").read_bytes()
    for path in ("/", "/playground"):
        response = c.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert response.content == page
        # the page holds an API key: scripts and calls from this origin only
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"


def test_page_loads_only_its_own_files_and_they_are_small():
    """No CDN: every src/href of the page is relative and served here with its type."""
    c = client()
    html = (PAGE_DIR / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert links
    for link in links:
        if link.startswith("data:"):
            continue
        assert not re.match(r"^([a-z]+:)?//", link) and not link.startswith("/"), link
        response = c.get("/" + link)  # relative to the page at /
        assert response.status_code == 200, link
    for name, media_type in ASSETS.items():
        if name != "index.html":
            response = c.get(f"/playground/{name}")
            assert response.status_code == 200
            assert response.headers["content-type"].split(";")[0] == media_type
            assert response.content == (PAGE_DIR / name).read_bytes()
    total = sum((PAGE_DIR / name).stat().st_size for name in ASSETS)
    assert total < 30_000, f"the page grew to {total} bytes"


def test_config_tells_the_page_what_it_needs_and_no_secret():
    c = client(api_keys=["sk-playground-secret"], default_instruction="Judge code search results",
               max_documents=25, served_model_name="qwen3-reranker-0.6b")
    response = c.get("/playground/config")
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "qwen3-reranker-0.6b"
    assert body["default_instruction"] == "Judge code search results"
    assert body["max_documents"] == 25
    assert body["auth"] is True
    assert "sk-playground-secret" not in response.text
    assert client().get("/playground/config").json()["auth"] is False


def test_playground_off_serves_nothing_and_the_api_stays():
    c = client(playground=False)
    for path in ("/", "/playground", "/playground/app.js", "/playground/style.css", "/playground/config"):
        response = c.get(path)
        assert response.status_code == 404, path
        assert response.json()["detail"] == "Not Found"
    assert c.get("/livez").status_code == 200
    assert "/v1/rerank" in c.get("/openapi.json").json()["paths"]


def test_playground_is_not_in_the_openapi_schema():
    paths = client().get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/playground")]


def test_the_wheel_ships_the_page(tmp_path):
    """package-data in pyproject.toml: an installed wheel has the static files."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("server", "launcher"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist"), str(src)],
                         check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ASSETS:
        assert f"server/playground/{name}" in names, name
