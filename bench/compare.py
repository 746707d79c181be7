#!/usr/bin/env python3
"""Runs one bench on two git revisions and sets their JSON figures side by side: A, B and B/A for every number.

    .venv/bin/python bench/compare.py BENCH.py REV_A REV_B [--json PATH] [-- bench args...]
    .venv/bin/python bench/compare.py bench/webhook_ingest.py HEAD WORKTREE -- --duration 3 --no-noop

A revision is anything `git rev-parse` knows (a commit, a branch, a tag, HEAD~2), or the word WORKTREE: the
checkout as it is, uncommitted changes and untracked files included. Every other revision is checked out with
`git worktree add --detach` into a temporary directory (removed at the end, whatever happens), and the bench runs
there as `PYTHON <worktree>/<bench> --json <file> <bench args>`, with that directory as cwd and on PYTHONPATH
(ahead of the editable install of the main checkout), so the bench and the processes it starts
(`python -m server.cli ...`, run from the checkout tests/support/processes.py is imported from) run that
revision's code. Before each run it prints where `server` is imported from under that environment and stops if
that is not the revision's directory.

Numbers are compared key by key, nested objects flattened with dots (`store_commands_per_inbound.total`);
booleans, strings and lists are left out. Exit status: 0 when both runs wrote figures, 2 when the bench does not
exist at a revision or has no --json there (older revisions), 1 when a run failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKTREE = "WORKTREE"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PYTHON = ROOT / ".venv" / "bin" / "python"
# Prints the file `server` is imported from.
PROBE = "import server; print(server.__file__)"


class CompareError(Exception):
    """A revision cannot be compared: the message says why; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------------------
# Figures


def flatten(figures: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a bench's JSON, nested objects joined with dots; booleans, strings, lists and nulls left out."""
    out: dict[str, float] = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def ratio(a: float, b: float) -> float | None:
    """B/A; None when it says nothing (A zero, either not finite)."""
    if a == 0 or not math.isfinite(a) or not math.isfinite(b):
        return None
    return b / a


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Every numeric key present in both: {"a", "b", "ratio"}, keys sorted; and the keys only one side has."""
    fa, fb = flatten(a), flatten(b)
    common = sorted(set(fa) & set(fb))
    return {
        "keys": {k: {"a": fa[k], "b": fb[k], "ratio": ratio(fa[k], fb[k])} for k in common},
        "only_in_a": sorted(set(fa) - set(fb)),
        "only_in_b": sorted(set(fb) - set(fa)),
    }


def table(result: Mapping[str, Any], label_a: str, label_b: str) -> str:
    """The comparison as aligned text: key, A, B, B/A."""
    keys: Mapping[str, Mapping[str, float | None]] = result["keys"]
    width = max([len("key"), *map(len, keys)])
    lines = [f"{'key':<{width}}  {label_a[:14]:>14}  {label_b[:14]:>14}  {'B/A':>7}"]
    for key, row in keys.items():
        r = row["ratio"]
        lines.append(f"{key:<{width}}  {row['a']:>14.6g}  {row['b']:>14.6g}  {'-' if r is None else f'{r:.3f}':>7}")
    for side, label in (("only_in_a", label_a), ("only_in_b", label_b)):
        if result[side]:
            lines.append(f"only in {label}: {', '.join(result[side])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Revisions


def git(repo: Path, *args: str) -> str:
    """Runs git in `repo`; its stdout, stripped. Raises CompareError with git's message when it fails."""
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompareError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


@dataclass(frozen=True)
class Checkout:
    """A revision's files: the directory the bench runs in, and what it is."""

    rev: str
    commit: str  # the commit, or "WORKTREE" for the checkout as it is
    path: Path


def resolve(repo: Path, rev: str) -> Checkout:
    """What `rev` names: the checkout itself for WORKTREE, else its commit (CompareError, exit 2, if none)."""
    if rev == WORKTREE:
        return Checkout(rev, WORKTREE, repo)
    try:
        commit = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except CompareError:
        raise CompareError(f"no such revision: {rev}", code=2) from None
    return Checkout(rev, commit, repo)


@contextmanager
def checkout(repo: Path, rev: str) -> Iterator[Checkout]:
    """The checkout itself for WORKTREE; otherwise a detached worktree of `rev`, removed when the block ends."""
    co = resolve(repo, rev)
    if co.commit == WORKTREE:
        yield co
        return
    path = Path(tempfile.mkdtemp(prefix=f"bench-compare-{co.commit[:10]}-"))
    path.rmdir()  # git worktree add wants to make it
    try:
        git(repo, "worktree", "add", "--detach", str(path), co.commit)
        yield Checkout(rev, co.commit, path)
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)], capture_output=True)
        if path.exists():  # a failed remove: the directory goes, `prune` forgets it
            shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)


def check_bench(repo: Path, co: Checkout, bench: str) -> None:
    """CompareError (exit 2) unless the bench exists at the revision and takes --json there."""
    if co.commit == WORKTREE:
        file = repo / bench
        if not file.is_file():
            raise CompareError(f"{bench} does not exist in the working tree", code=2)
        source = file.read_text()
    else:
        try:
            source = git(repo, "show", f"{co.commit}:{bench}")
        except CompareError:
            raise CompareError(f"{bench} does not exist at {co.rev} ({co.commit[:10]})", code=2) from None
    if '"--json"' not in source and "'--json'" not in source:
        raise CompareError(
            f"{bench} at {co.rev} ({co.commit[:10]}) has no --json option (older than the JSON output): "
            "nothing to compare",
            code=2,
        )


def child_env(co: Checkout) -> dict[str, str]:
    """The environment of the bench's process: the revision's directory (and its generated client) first."""
    env = dict(os.environ)
    paths = [str(co.path), str(co.path / "clients" / "python" / "src")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def imported_from(python: Path, co: Checkout) -> str:
    """Where `server` is imported from by `python` run as the bench will be (cwd and PYTHONPATH)."""
    proc = subprocess.run(
        [str(python), "-c", PROBE], cwd=co.path, env=child_env(co), capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() or f"(probe failed: {proc.stderr.strip()[-300:]})"


def run_bench(python: Path, co: Checkout, bench: str, args: list[str], out: Path) -> dict[str, Any]:
    """Runs the bench at `co` once, its output passed through; its JSON figures."""
    if (co.path / "server").is_dir():
        where = imported_from(python, co)
        print(f"== {co.rev} ({co.commit[:10]}) in {co.path}: server imported from {where}", flush=True)
        if not Path(where).resolve().is_relative_to(co.path.resolve()):
            raise CompareError(f"at {co.rev}, `server` would be imported from {where}, not from {co.path}")
    else:
        print(f"== {co.rev} ({co.commit[:10]}) in {co.path} (no server package there)", flush=True)
    cmd = [str(python), str(co.path / bench), "--json", str(out), *args]
    print("   " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=co.path, env=child_env(co), check=False)
    if not out.is_file() or not out.read_text().strip():
        raise CompareError(f"{bench} at {co.rev} exited with {proc.returncode} and wrote no figures")
    if proc.returncode != 0:
        print(f"   (exited with {proc.returncode}; its figures are compared all the same)", flush=True)
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    ours, bench_args = (raw[: raw.index("--")], raw[raw.index("--") + 1 :]) if "--" in raw else (raw, [])
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0], epilog="Bench arguments follow --.")
    p.add_argument("bench", type=Path, help="the bench script, e.g. bench/webhook_ingest.py")
    p.add_argument("rev_a", help=f"a revision (commit, branch, tag) or {WORKTREE}")
    p.add_argument("rev_b", help=f"a revision (commit, branch, tag) or {WORKTREE}")
    p.add_argument("--json", type=Path, help="also write the comparison here")
    p.add_argument("--python", type=Path, help=f"the interpreter to run the bench with (default {DEFAULT_PYTHON})")
    args = p.parse_args(ours)
    python: Path = args.python or (DEFAULT_PYTHON if DEFAULT_PYTHON.exists() else Path(sys.executable))

    bench_path = args.bench.resolve()
    anchor = bench_path.parent if bench_path.parent.is_dir() else Path.cwd()  # the repository the bench is in
    try:
        repo = Path(git(anchor, "rev-parse", "--show-toplevel"))
    except CompareError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    bench = bench_path.relative_to(repo).as_posix()

    runs: list[tuple[Checkout, dict[str, Any]]] = []
    try:
        for rev in (args.rev_a, args.rev_b):  # both, before a long run: is the bench there, with --json?
            check_bench(repo, resolve(repo, rev), bench)
        with tempfile.TemporaryDirectory(prefix="bench-compare-out-") as tmp:
            for i, rev in enumerate((args.rev_a, args.rev_b)):
                with checkout(repo, rev) as co:
                    runs.append((co, run_bench(python, co, bench, bench_args, Path(tmp) / f"{i}.json")))
    except CompareError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return exc.code

    (co_a, a), (co_b, b) = runs
    result = compare(a, b)
    label_a, label_b = (f"A {co_a.rev}", f"B {co_b.rev}")
    print(f"\n{bench} {' '.join(bench_args)}\n")
    print(table(result, label_a, label_b))
    if args.json:
        doc = {
            "bench": bench,
            "bench_args": bench_args,
            "a": {"rev": co_a.rev, "commit": co_a.commit},
            "b": {"rev": co_b.rev, "commit": co_b.commit},
            **result,
        }
        args.json.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
