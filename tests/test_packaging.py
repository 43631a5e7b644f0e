"""The project installs the way the README and the Dockerfile say it does."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dagster_is_pinned_exactly():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==") for d in deps if "==" in d)
    for name in [
        "dagster",
        "dagster-webserver",
        "dagster-graphql",
        "dagster-pipes",
        "dagster-shared",
    ]:
        assert pins[name] == "1.13.27"
    assert pins["dagster-aws"] == pins["dagster-postgres"] == "0.29.27"


def test_dockerfile_installs_every_package_like_the_makefile():
    docker = (ROOT / "Dockerfile").read_text()
    assert docker.startswith("#") and "FROM python:3.11-slim" in docker
    for package in ["pipecraft", "starrynight", "dagster_defs", "conductor"]:
        assert re.search(rf"^COPY {package} \./{package}$", docker, re.M), package
    assert "python -m pip install ." in docker
    assert 'CMD ["starrynight", "--help"]' in docker
    make = (ROOT / "Makefile").read_text()
    assert "-m pip install --quiet -e '.[dev]'" in make


def test_readme_opens_with_the_two_commands():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    assert "make demo" in head and "make test" in head
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_console_script_answers_help():
    out = subprocess.run(
        [sys.executable, "-m", "starrynight.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "sample" in out.stdout
