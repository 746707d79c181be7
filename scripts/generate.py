"""Regenerates the Python stubs in clients/python from protos/; `--check` fails when they differ."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "clients" / "python" / "src"
GENERATED = OUT / "sms" / "v1"


def generate(into: Path) -> None:
    """Runs protoc with the grpc and mypy plugins over protos/sms/v1 into `into`."""
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    bin_dir = Path(sys.executable).parent
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "sms" / "v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--python_out={into}",
            f"--grpc_python_out={into}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={into}",
            f"--mypy_grpc_out={into}",
            *files,
        ],
        check=True,
    )
    for pkg in (into / "sms", into / "sms" / "v1"):
        (pkg / "__init__.py").touch()
    (into / "sms" / "py.typed").touch()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        fresh_dir = fresh / "sms" / "v1"
        if args.check:
            cmp = filecmp.dircmp(fresh_dir, GENERATED, ignore=["__pycache__"])
            stale = cmp.diff_files + cmp.left_only + cmp.right_only
            if stale:
                print(f"generated code is out of date: {sorted(stale)}; run scripts/generate.py")
                return 1
            print("generated Python code matches protos/")
            return 0
        shutil.rmtree(GENERATED, ignore_errors=True)
        shutil.copytree(fresh_dir, GENERATED)
        (OUT / "sms" / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
