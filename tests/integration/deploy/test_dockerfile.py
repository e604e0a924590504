"""Static checks of the Dockerfile, and a replay of the runtime stage's install steps.

No Docker engine is needed. The image itself cannot be built here; instead:

* the Dockerfile is parsed with ``dockerfile-parse`` and checked against the rules the image must keep
  (pinned base, non-root numeric USER, no torch in the runtime stage, HEALTHCHECK without curl, EXPOSE
  9464, OCI labels, HOME/TMPDIR on the tmpfs, .dockerignore keeps the venv and models out);
* every rule is also run against broken Dockerfiles, so the checks are known to be able to fail;
* ``test_runtime_install_replay`` (marked ``slow``, needs the package index) runs the runtime stage's
  ``pip install`` RUN steps verbatim in a fresh venv against a wheel built from this checkout, and proves
  that ``framewatch --help`` works there while ``import torch`` does not.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO

dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="dev dependency dockerfile-parse missing")

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HTTP_PORT = "9464"
OCI_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.source",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
}


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[dict] = field(default_factory=list)

    def of(self, kind: str) -> list[dict]:
        return [i for i in self.instructions if i["instruction"] == kind]


def parse_stages(text: str) -> list[Stage]:
    parser = dockerfile_parse.DockerfileParser(fileobj=_BytesFile(text), env_replace=False)
    stages: list[Stage] = []
    for instr in parser.structure:
        if instr["instruction"] == "FROM":
            parts = instr["value"].split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(image=parts[0], name=name))
        elif stages:
            stages[-1].instructions.append(instr)
    return stages


class _BytesFile:
    """dockerfile-parse wants a binary file object; give it one over an in-memory string."""

    def __init__(self, text: str) -> None:
        import io

        self._buf = io.BytesIO(text.encode())
        self.name = "Dockerfile"

    def __getattr__(self, item):
        return getattr(self._buf, item)


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instr in stage.of("ENV"):
        # dockerfile-parse keeps the raw value; KEY=VALUE pairs may be separated by spaces.
        for key, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', instr["value"]):
            env[key] = value.strip('"')
    return env


def labels_of(stage: Stage) -> dict[str, str]:
    labels: dict[str, str] = {}
    for instr in stage.of("LABEL"):
        for key, value in re.findall(r'([\w.\-]+)=("[^"]*"|\S+)', instr["value"]):
            labels[key] = value.strip('"')
    return labels


def is_pinned(image: str) -> bool:
    """``name@sha256:...`` or ``name:<tag with an exact x.y.z version>`` (no ``latest``, no bare major)."""
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    if "$" in image or ":" not in image.rsplit("/", 1)[-1]:
        return False
    tag = image.rsplit(":", 1)[1]
    return bool(re.match(r"^v?\d+\.\d+\.\d+", tag)) and "latest" not in tag


def problems(text: str) -> list[str]:
    """Every rule the Dockerfile must keep; returns human-readable violations (empty = fine)."""
    out: list[str] = []
    stages = parse_stages(text)
    if len(stages) < 2:
        return ["not multi-stage: need a builder stage and a runtime stage"]
    for stage in stages:
        if stage.image not in {s.name for s in stages} and not is_pinned(stage.image):
            out.append(f"base image {stage.image!r} is not pinned to an exact version tag or digest")
    builder, final = stages[:-1], stages[-1]

    builder_runs = " ".join(i["value"] for s in builder for i in s.of("RUN"))
    if "torch==" not in builder_runs or "download.pytorch.org/whl/cpu" not in builder_runs:
        out.append("builder stage must install pinned CPU torch from the PyTorch CPU index")
    if "build-model" not in builder_runs:
        out.append("builder stage must run `framewatch build-model`")

    final_text = " ".join(i["value"] for i in final.instructions
                          if i["instruction"] in {"RUN", "COPY", "ADD"})
    if re.search(r"install[^&;|]*\btorch\b|\[build\]|sentence-transformers|/opt/build\b", final_text):
        out.append("runtime stage installs or copies torch / the [build] extra / the build venv")
    if not any("pip" in i["value"] and "install" in i["value"] for i in final.of("RUN")):
        out.append("runtime stage has no pip install step")

    users = final.of("USER")
    if not users:
        out.append("runtime stage has no USER (would run as root)")
    else:
        user = users[-1]["value"].split(":")[0].strip()
        if user in {"root", "0"} or not user.isdigit():
            out.append(f"runtime USER must be a numeric non-root uid, got {user!r}")

    checks = final.of("HEALTHCHECK")
    if not checks:
        out.append("runtime stage has no HEALTHCHECK")
    else:
        hc = checks[-1]["value"]
        if "/healthz" not in hc or "urllib" not in hc:
            out.append("HEALTHCHECK must probe /healthz with python urllib")
        if re.search(r"\b(curl|wget)\b", hc):
            out.append("HEALTHCHECK must not need curl/wget")

    exposed = " ".join(i["value"] for i in final.of("EXPOSE")).split()
    if HTTP_PORT not in [p.split("/")[0] for p in exposed]:
        out.append(f"runtime stage does not EXPOSE {HTTP_PORT}")

    missing = OCI_LABELS - set(labels_of(final))
    if missing:
        out.append(f"missing OCI labels: {sorted(missing)}")

    env = env_of(final)
    for var in ("HOME", "TMPDIR"):
        if not env.get(var, "").startswith("/tmp"):
            out.append(f"{var} must point at the writable tmpfs (/tmp), got {env.get(var)!r}")
    if env.get("PYTHONDONTWRITEBYTECODE") != "1":
        out.append("PYTHONDONTWRITEBYTECODE=1 is needed on a read-only root filesystem")
    workdirs = final.of("WORKDIR")
    if workdirs and not workdirs[-1]["value"].startswith("/tmp"):
        out.append("runtime WORKDIR must be the writable /tmp")

    entry = " ".join(i["value"] for i in final.of("ENTRYPOINT") + final.of("CMD"))
    if "framewatch" not in entry or "run" not in entry:
        out.append("ENTRYPOINT/CMD must start `framewatch run`")
    return out


# --------------------------------------------------------------------------------------------- static


def test_dockerfile_keeps_every_rule():
    assert problems(DOCKERFILE.read_text()) == []


BROKEN = {
    "unpinned base": (r"FROM python:3\.11\.14-slim-bookworm AS runtime", "FROM python:latest AS runtime"),
    "root user": (r"USER 10001:10001", "USER root"),
    "no user": (r"USER 10001:10001\n", ""),
    "torch at run time": (r'(RUN python -m venv "\$VIRTUAL_ENV")', r"RUN pip install torch==2.13.0\n\1"),
    "build extra at run time": (r"/tmp/wheels/framewatch-\*\.whl", "/tmp/wheels/framewatch-*.whl[build]"),
    "no healthcheck": (r"HEALTHCHECK [^\n]*\\\n[^\n]*\n", ""),
    "curl healthcheck": (r'CMD \["python".*healthz[^\n]*', 'CMD curl -f http://127.0.0.1:9464/healthz'),
    "no expose": (r"EXPOSE 9464", "EXPOSE 8080"),
    "home on root fs": (r"HOME=/tmp", "HOME=/home/framewatch"),
    "no labels": (r"LABEL org\.opencontainers\.image\.title", "LABEL org.example.title"),
    "single stage": (r"(?s)^.*?(FROM python:3\.11\.14-slim-bookworm AS runtime)", r"\1"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_rules_catch_a_broken_dockerfile(case):
    pattern, replacement = BROKEN[case]
    text = DOCKERFILE.read_text()
    broken, count = re.subn(pattern, replacement, text, count=1)
    assert count == 1, f"mutation {case!r} no longer applies to the Dockerfile: update the test"
    assert problems(broken), f"the rules did not notice: {case}"


def test_dockerignore_keeps_context_small():
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", ".dockerignore should be an allow-list starting with '*'"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"pyproject.toml", "monitor"} <= allowed
    for never in (".venv", ".git", "models/minilm", "tests", "data"):
        assert never not in allowed, f"{never} must not be in the build context"
    assert "**/__pycache__" in lines


def test_runtime_env_matches_settings():
    """The image's FRAMEWATCH_* env names must be real settings (a typo would be silently ignored)."""
    from monitor.settings import ENV_PREFIX, Settings

    fields = {ENV_PREFIX + f.upper() for f in Settings.__dataclass_fields__}
    final = parse_stages(DOCKERFILE.read_text())[-1]
    for key in env_of(final):
        if key.startswith(ENV_PREFIX):
            assert key in fields, f"{key} is not a Framewatch setting"


# ----------------------------------------------------------------------------------- install replay


def _index_reachable() -> tuple[bool, str]:
    if os.environ.get("FRAMEWATCH_OFFLINE") == "1":
        return False, "FRAMEWATCH_OFFLINE=1"
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
    host = urllib.parse.urlparse(index).hostname or "pypi.org"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        return False, f"package index {host} unreachable ({exc})"
    return True, ""


def runtime_pip_steps(text: str) -> list[str]:
    """The runtime stage's RUN commands that install with pip, verbatim."""
    final = parse_stages(text)[-1]
    return [i["value"] for i in final.of("RUN") if re.search(r"\bpip\b.*\binstall\b", i["value"])]


def test_runtime_pip_steps_are_found():
    steps = runtime_pip_steps(DOCKERFILE.read_text())
    assert len(steps) == 1
    assert "/tmp/wheels/framewatch-" in steps[0] and "$VIRTUAL_ENV" in steps[0]


#: Modules that only `build-model` ([build] extra: torch) or `demo` ([demo] extra: the Tansu broker) need.
BUILD_OR_DEMO_ONLY = {
    "monitor._export", "monitor._tansu", "monitor.commands.build_model", "monitor.commands.demo",
}
IMPORT_ALL = f"""
import importlib, pkgutil, sys, monitor
skip = {sorted(BUILD_OR_DEMO_ONLY)!r}
names = [m.name for m in pkgutil.walk_packages(monitor.__path__, "monitor.") if m.name not in skip]
for name in names:
    importlib.import_module(name)
assert "torch" not in sys.modules, "a runtime module imported torch"
print(len(names), "modules, torch-free")
"""


def _dir_size(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
def test_runtime_install_replay(tmp_path, record_property):
    """Run the runtime stage's pip steps in a fresh venv: framewatch works there, torch is absent."""
    ok, reason = _index_reachable()
    if not ok:
        pytest.skip(f"needs the package index to install runtime dependencies: {reason}")

    # Build the wheel from a copy of the sources, as the builder stage does (`pip wheel --no-deps`), so
    # that setuptools' build/ and *.egg-info never land in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "monitor", src / "monitor", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if not (src / "README.md").exists():  # pyproject names it; the image build copies it from the repo
        (src / "README.md").write_text("framewatch\n")
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--wheel-dir", str(wheels), "-q"],
        check=True, cwd=tmp_path,
    )
    assert list(wheels.glob("framewatch-*.whl"))

    venv = tmp_path / "venv"
    env = {
        **os.environ,
        "VIRTUAL_ENV": str(venv),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_QUIET": "1",
    }
    env.pop("PYTHONPATH", None)
    for step in runtime_pip_steps(DOCKERFILE.read_text()):
        command = step.replace("/tmp/wheels", str(wheels))
        subprocess.run(["bash", "-euo", "pipefail", "-c", command], check=True, env=env, cwd=tmp_path)

    size_mb = _dir_size(venv) / 1e6
    record_property("runtime_venv_mb", round(size_mb, 1))
    print(f"\nruntime venv size: {size_mb:.1f} MB")

    py = venv / "bin" / "python"
    clean_env = {k: v for k, v in env.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, env=clean_env)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

    helped = subprocess.run([str(venv / "bin" / "framewatch"), "--help"], capture_output=True, text=True,
                            env=clean_env, cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "run" in helped.stdout and "build-model" in helped.stdout

    run_help = subprocess.run([str(venv / "bin" / "framewatch"), "run", "--help"], capture_output=True,
                              text=True, env=clean_env, cwd=tmp_path)
    assert run_help.returncode == 0, run_help.stderr

    # Every module of the installed package imports without torch, except the build/demo-only ones.
    imported = subprocess.run([str(py), "-c", IMPORT_ALL], capture_output=True, text=True, env=clean_env,
                              cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().endswith("torch-free")

    # torch alone is ~700 MB installed: a budget well under that catches it sneaking in as a dependency.
    assert size_mb < 600, f"runtime venv is {size_mb:.0f} MB: did a heavy dependency arrive?"
