"""server.segments against the shared vectors, and the web client's countSegments via its vitest suite."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TypedDict

import pytest

from server.segments import GSM7, UCS2, SegmentCount, count

VECTORS_PATH = Path(__file__).parent / "data" / "segment_vectors.json"
WEB = Path(__file__).resolve().parent.parent / "clients" / "web"


class Vector(TypedDict):
    """One entry of tests/data/segment_vectors.json, shared with clients/web/src/segments.test.ts."""

    name: str
    body: str
    encoding: str
    segments: int
    units: int
    first_non_gsm: str


def load_vectors() -> list[Vector]:
    """Read the shared vectors."""
    vectors: list[Vector] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return vectors


VECTORS = load_vectors()


def per_segment(vector: Vector) -> int:
    """The segment size that applies: the single-segment size for 0 or 1 segment, else the part size."""
    if vector["encoding"] == GSM7:
        return 153 if vector["segments"] > 1 else 160
    return 67 if vector["segments"] > 1 else 70


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: Vector) -> None:
    assert vector["encoding"] in (GSM7, UCS2)
    expected = SegmentCount(
        encoding=vector["encoding"],
        segments=vector["segments"],
        units=vector["units"],
        per_segment=per_segment(vector),
        first_non_gsm=vector["first_non_gsm"],
    )
    assert count(vector["body"]) == expected


def test_vectors_are_many_and_uniquely_named() -> None:
    names = [v["name"] for v in VECTORS]
    assert len(names) >= 25
    assert len(set(names)) == len(names)


@pytest.mark.skipif(not (WEB / "node_modules").is_dir(), reason="clients/web/node_modules is not installed")
def test_web_client_agrees() -> None:
    """Run the web client's vitest suite over the same vectors, so CI (pytest only) covers it."""
    npm = shutil.which("npm")
    assert npm is not None, "npm is not on PATH"
    env = {**os.environ, "NO_COLOR": "1", "CI": "1"}
    env.pop("FORCE_COLOR", None)
    result = subprocess.run(
        [npm, "run", "--silent", "test"],
        cwd=WEB,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert result.returncode == 0, output
    assert f"countSegments over {len(VECTORS)} vectors" in output, output
