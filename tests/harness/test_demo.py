"""scripts/demo.py (the README's main job) at a tiny size: both runs, the table, the plot, bad arguments."""
import subprocess
import sys

from tests.helpers import ROOT

DEMO = str(ROOT / "scripts" / "demo.py")


def test_demo_trains_both_and_writes_table_and_plot(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, DEMO, "--steps", "2", "--out", str(out), "trainer.seq_len=32",
                           "trainer.eval_tokens=256"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["GWT Haar-2", "AdamW"]
    gwt_kib, adam_kib = (float(r.split("|")[5].split()[0].replace(",", "")) for r in rows)
    assert gwt_kib * 4 == adam_kib  # Haar-2 keeps a quarter of Adam's state on the matrices
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "gwt" / "result.json").is_file() and (out / "adamw" / "result.json").is_file()
    assert "loss curves:" in proc.stdout


def test_demo_refuses_bad_steps_and_a_used_folder(tmp_path):
    proc = subprocess.run([sys.executable, DEMO, "--steps", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--steps=1" in proc.stderr
    (tmp_path / "x").write_text("keep me")
    proc = subprocess.run([sys.executable, DEMO, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (tmp_path / "x").read_text() == "keep me"
