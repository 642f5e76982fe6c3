"""scripts/bench_ab.py: imports another revision's gwt under its own name and times both side by side."""
import subprocess
import sys

from tests.helpers import ROOT


def test_bench_ab_runs_against_head(tmp_path):
    out = tmp_path / "ab.md"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_ab.py"), "--base", "HEAD", "--sizes", "20m",
                           "--methods", "haar2", "adam_level0", "--rounds", "1", "--warmup", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 20m |")]
    assert [r.split("|")[2].strip() for r in rows] == ["haar2", "adam_level0"]
    for row in rows:
        base_ms, new_ms = (float(row.split("|")[i]) for i in (3, 4))
        assert base_ms > 0 and new_ms > 0


def test_bench_ab_unknown_revision_is_one_line():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_ab.py"), "--base", "no-such-revision"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "--base 'no-such-revision'" in proc.stderr and "Traceback" not in proc.stderr
