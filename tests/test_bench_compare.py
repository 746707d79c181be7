"""bench/compare.py: its figure arithmetic, and one real run of a fake bench at two revisions of a scratch git repo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.compare import compare, flatten, ratio, table

COMPARE = Path(__file__).resolve().parent.parent / "bench" / "compare.py"

# A bench as compare.py expects one: takes --json PATH (and its own arguments), writes numbers there.
FAKE_BENCH = """
import argparse, json, pathlib, sys
RATE = {rate}
p = argparse.ArgumentParser()
p.add_argument("--json", type=pathlib.Path)
p.add_argument("--scale", type=float, default=1.0)
args = p.parse_args()
figures = {{
    "posts_per_s": RATE * args.scale,
    "p99_ms": 20,
    "zero": 0,
    "target_met": True,
    "route": "inbound",
    "cwd_is_checkout": int(pathlib.Path.cwd().resolve() == pathlib.Path(__file__).resolve().parent.parent),
    "store_commands_per_inbound": {{"RecordInbound": 5, "total": 5.5}},
    {extra}
}}
print("fake bench ran with rate", RATE * args.scale)
args.json.write_text(json.dumps(figures))
"""


def test_flatten_keeps_numbers_and_joins_nested_keys_with_dots() -> None:
    figures = {
        "rate": 12,
        "p99_ms": 3.5,
        "ok": True,
        "route": "inbound",
        "missing": None,
        "list": [1, 2],
        "by": {"op": {"RecordInbound": 5, "other": 0.5}, "total": 5.5},
    }
    assert flatten(figures) == {
        "rate": 12.0,
        "p99_ms": 3.5,
        "by.op.RecordInbound": 5.0,
        "by.op.other": 0.5,
        "by.total": 5.5,
    }


def test_compare_gives_a_b_and_ratio_for_keys_in_both() -> None:
    a = {"rate": 100, "p99_ms": 0, "cmds": {"total": 4}, "old": 1}
    b = {"rate": 150, "p99_ms": 7, "cmds": {"total": 2}, "new": 2}
    result = compare(a, b)
    assert result["keys"] == {
        "cmds.total": {"a": 4.0, "b": 2.0, "ratio": 0.5},
        "p99_ms": {"a": 0.0, "b": 7.0, "ratio": None},
        "rate": {"a": 100.0, "b": 150.0, "ratio": 1.5},
    }
    assert result["only_in_a"] == ["old"]
    assert result["only_in_b"] == ["new"]
    assert ratio(float("nan"), 1.0) is None
    text = table(result, "A main", "B WORKTREE")
    assert "rate" in text and "1.500" in text and "only in A main: old" in text


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A scratch repository: a first commit without the bench, one with RATE 100, and RATE 300 uncommitted."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "bench@example.test")
    git(repo, "config", "user.name", "bench")
    (repo / "README").write_text("scratch\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "no bench yet")
    git(repo, "tag", "before-bench")
    (repo / "bench").mkdir()
    (repo / "bench" / "fake.py").write_text(FAKE_BENCH.format(rate=100, extra='"only_old": 1,'))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "bench")
    (repo / "bench" / "fake.py").write_text(FAKE_BENCH.format(rate=300, extra='"only_new": 2,'))
    return repo


def run_compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(COMPARE), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compare_runs_the_bench_at_a_commit_and_in_the_working_tree(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "comparison.json"
    commit = git(repo, "rev-parse", "HEAD")
    proc = run_compare(str(repo / "bench" / "fake.py"), "main", "WORKTREE", "--json", str(out), "--", "--scale", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fake bench ran with rate 200" in proc.stdout  # the committed revision, with the bench's argument
    assert "fake bench ran with rate 600" in proc.stdout  # the uncommitted one
    rate_line = next(line for line in proc.stdout.splitlines() if line.startswith("posts_per_s "))
    assert rate_line.split()[1:] == ["200", "600", "3.000"]
    zero_line = next(line for line in proc.stdout.splitlines() if line.startswith("zero "))
    assert zero_line.split()[-1] == "-"  # no ratio to a zero

    doc = json.loads(out.read_text())
    assert doc["bench"] == "bench/fake.py"
    assert doc["bench_args"] == ["--scale", "2"]
    assert doc["a"] == {"rev": "main", "commit": commit}
    assert doc["b"] == {"rev": "WORKTREE", "commit": "WORKTREE"}
    assert doc["keys"]["posts_per_s"] == {"a": 200.0, "b": 600.0, "ratio": 3.0}
    assert doc["keys"]["store_commands_per_inbound.total"] == {"a": 5.5, "b": 5.5, "ratio": 1.0}
    assert doc["keys"]["cwd_is_checkout"] == {"a": 1.0, "b": 1.0, "ratio": 1.0}  # each ran in its own checkout
    assert "target_met" not in doc["keys"] and "route" not in doc["keys"]
    assert doc["only_in_a"] == ["only_old"] and doc["only_in_b"] == ["only_new"]
    # The temporary worktree is gone, and the checkout is as it was.
    assert len(git(repo, "worktree", "list").splitlines()) == 1
    assert git(repo, "status", "--porcelain") == "M bench/fake.py"


def test_a_revision_without_the_bench_exits_2(repo: Path) -> None:
    proc = run_compare(str(repo / "bench" / "fake.py"), "before-bench", "WORKTREE")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "bench/fake.py does not exist at before-bench" in proc.stderr
    assert len(git(repo, "worktree", "list").splitlines()) == 1


def test_a_bench_without_json_exits_2(repo: Path) -> None:
    (repo / "bench" / "plain.py").write_text("print('no figures')\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "plain bench")
    proc = run_compare(str(repo / "bench" / "plain.py"), "HEAD", "WORKTREE")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "has no --json option" in proc.stderr
