"""The benchmark still runs: `scripts/bench.py --quick --only sessions` against the real servers
(memory-mcp and the mcp SDK reference server in both configurations). No timing assertion: the
targets are the benchmark's business, printed as MET / NOT MET, never a test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_sessions_prints_the_table(tmp_path: Path) -> None:
    # The SDK's fast configuration runs on uvloop + httptools: the `bench` extra, which
    # scripts/test installs. Missing, this fails rather than skips.
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--only", "sessions", "--duration", "1",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "memory-mcp benchmark (quick)" in done.stdout
    for column in ("memory-mcp", "sdk-default", "sdk-fast"):
        assert column in done.stdout
    assert "session open c=16" in done.stdout and "opens/s" in done.stdout
    raw = json.loads(out.read_text())
    runs = raw["raw"]["sessions"]
    assert set(runs) == {"memory-mcp", "sdk-default", "sdk-fast"}
    for server, rounds in runs.items():
        assert rounds and all(r["errors"] == 0 for r in rounds), (server, rounds)
        assert all(r["rate"] > 0 for r in rounds), (server, rounds)
