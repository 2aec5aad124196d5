"""Dockerfile: linted and its commands exercised without a Docker engine.

Parsed with a small parser (continuations, comments, JSON exec form). What can run here does: the
copied sources are built into a wheel and the installed launcher answers --help from outside the repo,
and the HEALTHCHECK command itself is executed against the shared running service.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from server.settings import Settings
from tests.conftest import ROOT, free_port

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
USER_UID = "10001"
STATE_DIR = "/var/lib/reranker"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; backslash continuations joined, comment lines dropped."""
    result, buffer = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        line = (buffer + stripped).strip()
        buffer = ""
        if line:
            keyword, _, args = line.partition(" ")
            result.append((keyword.upper(), args.strip()))
    assert not buffer, "Dockerfile ends inside a continuation"
    return result


def all_of(keyword: str) -> list[str]:
    return [args for kw, args in instructions() if kw == keyword]


def only(keyword: str) -> str:
    found = all_of(keyword)
    assert len(found) == 1, f"expected one {keyword}, got {found}"
    return found[0]


def env_vars() -> dict[str, str]:
    values = {}
    for args in all_of("ENV"):
        for token in shlex.split(args):
            key, sep, value = token.partition("=")
            assert sep, f"use ENV KEY=VALUE, not the legacy form: {args}"
            values[key] = value
    return values


def shell_commands(args: str) -> list[list[str]]:
    """A RUN line (shell form) split into simple commands at && ; || |."""
    commands, current = [], []
    lexer = shlex.shlex(args, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    for token in lexer:
        if token in ("&&", ";", "||", "|", "&"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def copies() -> list[tuple[list[str], str]]:
    result = []
    for args in all_of("COPY"):
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        result.append((parts[:-1], parts[-1]))
    return result


def dockerignored(rel: str) -> bool:
    """Docker's .dockerignore (simplified: no `!` exceptions): a path is out when it or a parent matches."""
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "this check does not model ! exceptions"
    parts = Path(rel).parts
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        for pattern in patterns:
            pattern = pattern.strip("/")
            if fnmatch.fnmatch(prefix, pattern) or (pattern.startswith("**/") and
                                                      fnmatch.fnmatch(parts[i - 1], pattern[3:])):
                return True
    return False


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    return normalise(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec).group(0))


def test_base_image_is_pinned_to_the_vllm_release_not_latest():
    base = only("FROM")
    image, _, tag = base.split("@")[0].partition(":")
    assert image == "vllm/vllm-openai"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"pin a release tag, not {tag or 'an implicit latest'!r}"
    gpu_pin = [d for d in PYPROJECT["project"]["optional-dependencies"]["gpu"] if requirement_name(d) == "vllm"]
    assert gpu_pin == [f"vllm=={tag[1:]}"], "image tag and pyproject's gpu extra must name one vLLM"
    assert "digest" in DOCKERFILE.read_text() and "sha256" in DOCKERFILE.read_text()


def test_runs_as_a_non_root_user_before_the_entrypoint():
    sequence = instructions()
    entry = [i for i, (kw, _) in enumerate(sequence) if kw == "ENTRYPOINT"]
    users = [(i, args) for i, (kw, args) in enumerate(sequence) if kw == "USER"]
    assert entry and users and users[-1][0] < entry[0]
    user = users[-1][1].split(":")[0]
    assert user not in ("root", "0") and user == USER_UID


def test_entrypoint_runs_the_launcher_module_which_exists():
    entrypoint = json.loads(only("ENTRYPOINT"))  # exec form: SIGTERM reaches the launcher itself
    assert entrypoint == ["python3", "-m", "launcher"]
    result = subprocess.run([sys.executable, "-m", "launcher", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--mode" in result.stdout
    assert only("STOPSIGNAL") in ("SIGTERM", "TERM", "15")


def test_image_listens_on_all_interfaces_on_the_exposed_port():
    env = env_vars()
    assert env["RERANKER_HOST"] == "0.0.0.0"
    assert only("EXPOSE").split("/")[0] == env.get("RERANKER_PORT", "8000")
    fields = {f"RERANKER_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in env if k.startswith("RERANKER_")} <= fields


def test_caches_and_workdir_are_writable_by_the_image_user():
    env = env_vars()
    for key in ("HF_HOME", "RERANKER_CACHE_DIR", "HOME"):
        assert env[key] == STATE_DIR or env[key].startswith(STATE_DIR + "/"), key
    assert only("WORKDIR") == STATE_DIR
    chowned = [c for args in all_of("RUN") for c in shell_commands(args) if c[0] == "chown"]
    assert any(c[-2].split(":")[0] == USER_UID and c[-1] == STATE_DIR for c in chowned), chowned


def test_pip_installs_only_this_project_and_its_declared_dependencies():
    declared = {requirement_name(d) for d in PYPROJECT["project"]["dependencies"]}
    project_dirs = {dest.rstrip("/") for srcs, dest in copies() if "pyproject.toml" in srcs}
    with_value = {"-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-f", "--find-links"}
    installed = []
    for args in all_of("RUN"):
        for command in shell_commands(args):
            while command and "=" in command[0] and not command[0].startswith("-"):
                command = command[1:]  # VAR=value prefixes
            if "pip" not in command or "install" not in command:
                continue
            tokens = command[command.index("install") + 1:]
            assert not {"-r", "--requirement", "-e", "--editable"} & set(tokens), command
            skip = False
            for token in tokens:
                if skip:
                    skip = False
                elif token in with_value:
                    skip = True
                elif not token.startswith("-"):
                    installed.append(token)
    assert installed, "the Dockerfile installs nothing?"
    for spec in installed:
        if spec.rstrip("/") in project_dirs or spec in (".", "./"):
            continue
        assert requirement_name(spec) in declared, f"{spec} is neither this project nor in pyproject dependencies"


def test_copy_sources_exist_and_are_in_the_build_context():
    assert copies()
    for sources, _ in copies():
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not dockerignored(source), f"{source} is excluded by .dockerignore"
    # everything setuptools packages must be copied, or the image's install misses modules
    copied = {s.rstrip("/") for sources, _ in copies() for s in sources}
    includes = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in {p.rstrip("*") for p in includes}:
        assert package in copied, f"package {package} is not copied into the image"
    assert PYPROJECT["project"]["readme"] in copied


@pytest.mark.parametrize("path", [".venv", "models", ".cache", ".git", "server/__pycache__/x.pyc"])
def test_dockerignore_keeps_heavy_and_local_files_out(path):
    assert dockerignored(path)


def test_copied_sources_build_an_installable_launcher(tmp_path):
    """Replays the COPY + pip install steps (without dependencies) and runs the installed launcher."""
    for sources, dest in copies():
        target = tmp_path / "ctx" / dest.lstrip("/")
        for source in sources:
            src = ROOT / source
            if src.is_dir():  # Docker copies a directory's contents into the destination
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                                dirs_exist_ok=True)
            else:
                (target if dest.endswith("/") else target.parent).mkdir(parents=True, exist_ok=True)
                shutil.copy(src, target / src.name if dest.endswith("/") else target)
    project = next(tmp_path.joinpath("ctx").rglob("pyproject.toml")).parent
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(wheels), str(project)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "launcher/templates/qwen3_reranker.jinja" in names and "server/app.py" in names
    assert "offline/batch.py" in names  # `reranker batch` / `reranker eval`
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-m", "launcher", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    batch = subprocess.run([sys.executable, "-m", "launcher", "batch", "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert batch.returncode == 0 and "custom_id" in batch.stdout, batch.stderr
    located = subprocess.run([sys.executable, "-c", "import launcher; print(launcher.__file__)"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60)
    assert located.stdout.startswith(str(site)), located.stdout  # not the repo checkout


def healthcheck() -> tuple[dict[str, str], list[str]]:
    args = only("HEALTHCHECK")
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", args))
    command = args[args.index("CMD") + 3:].strip()
    assert command.startswith("["), "use the exec form (no shell needed in the image)"
    return options, json.loads(command)


@pytest.mark.engine
def test_healthcheck_command_passes_against_the_running_service(service):
    options, command = healthcheck()
    assert command[0] == "python3" and "curl" not in " ".join(command) and "wget" not in " ".join(command)
    assert "/ready" in " ".join(command) or "/health" in " ".join(command)
    timeout = float(options.get("timeout", "30s").rstrip("s"))
    port = service.url.rsplit(":", 1)[1]
    env = {**os.environ, "RERANKER_PORT": port}
    ok = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, text=True,
                        timeout=timeout + 10)
    assert ok.returncode == 0, ok.stderr
    # and it does fail where nothing answers
    env["RERANKER_PORT"] = str(free_port())
    down = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, text=True,
                          timeout=timeout + 10)
    assert down.returncode != 0


def test_bytecode_is_compiled_as_root_before_the_user_switch(tmp_path):
    """The image's user cannot write .pyc files: without bytecode compiled at build time every
    vLLM start recompiles its imports (benchmarks/import_time.py). The build step must run before
    USER, and its command must really leave bytecode behind (run here on a scratch package)."""
    sequence = instructions()
    user_at = next(i for i, (kw, _) in enumerate(sequence) if kw == "USER")
    compile_runs = [(i, args) for i, (kw, args) in enumerate(sequence)
                    if kw == "RUN" and "compileall" in args]
    assert compile_runs and all(i < user_at for i, _ in compile_runs)
    command = next(c for c in shell_commands(compile_runs[0][1]) if "compileall" in c)
    assert command[:3] == ["python3", "-m", "compileall"]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("VALUE = 1\n")
    flags = []
    for arg in command[3:]:  # the options, up to the directory list ($(...) in the Dockerfile)
        if arg.startswith("$("):
            break
        flags.append(arg)
    subprocess.run([sys.executable, "-m", "compileall", *flags, str(tmp_path)], check=True)
    assert list((tmp_path / "pkg" / "__pycache__").glob("mod.*.pyc"))
