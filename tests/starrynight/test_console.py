"""The console entry (``starrynight``, ``python -m starrynight.cli``): exit codes and output
survive its hard exit (it skips native destructors that can abort at interpreter exit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "starrynight.cli", *args], capture_output=True, text=True
    )


def test_success_keeps_all_output_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _run("sample", "generate", "-o", str(out), "--geometry", "shared", "--size", "96",
             "--sites", "1", "--wells", "A1", "--cycles", "3", "--barcodes", "8")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("wrote ") and "ground truth:" in r.stdout


def test_user_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = _run("inventory", "gen", "-d", str(tmp_path / "missing"), "-o", str(tmp_path / "ws"))
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ws" / "inventory").exists()


def test_usage_error_exits_2() -> None:
    r = _run("no-such-command")
    assert r.returncode == 2
    assert "No such command" in r.stderr
