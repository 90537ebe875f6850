"""``make bench`` (the README's command) runs every case end to end on the local services, at a tiny scale here:
each side's process succeeds and the table has a row of numbers per case. The figures themselves are the
README's, from a full-scale run."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_make_bench_runs_every_case(tmp_path):
    env = {**os.environ, "BENCH_ARGS": "--runs 1 --scale 0.01", "RAGVAULT_BENCH_ROOT": str(tmp_path)}
    proc = subprocess.run(["bash", "-c", "make bench"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=850)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    rows = re.findall(r"^\| ([a-z-]+) \| ([\d.]+) \([\d.]+\) \| ([\d.]+) \([\d.]+\) \| ([\d.]+) \(", out, re.MULTILINE)
    assert [case for case, *_ in rows] == ["upload-random", "upload-jsonl-zstd", "upload-tree", "redis-backup",
                                              "redis-restore", "mongo-backup", "list-dates"], out
    assert all(float(ours) > 0 and float(theirs) > 0 and float(ratio) > 0 for _, ours, theirs, ratio in rows)
