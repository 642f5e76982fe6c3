"""scripts/glue_summary.py on hand-made result.json files."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fake_run(root, name, task, optimizer, score, metric):
    final = {"step": 20, "epoch": 0.5, metric: score, "score": score}
    result = {
        "config": {"task": {"name": task, "metric": metric}, "model": {"name": "minilm_l6"},
                   "optimizer": {"name": optimizer, "lr": 5e-5, "wavelet": "haar", "level": 2},
                   "trainer": {"total_batch_size": 16, "max_length": 128}},
        "metrics": {**final, "steps": 20, "epochs": 0.5, "final": final, "best": final, "per_epoch": [final],
                    "train_examples_per_s": 4.0, "optimizer_state_bytes": 2**20, "peak_memory_bytes": 2**30},
        "git_commit": "0123456789abcdef", "git_dirty": False,
        "machine": {"cpu": "x86_64", "cpu_count": 2, "torch": "2.13.0"}}
    (root / name).mkdir(parents=True)
    (root / name / "result.json").write_text(json.dumps(result))


def test_summary_table_scores_and_gap(tmp_path):
    fake_run(tmp_path, "rte-adamw", "rte", "adamw", 55.0, "accuracy")
    fake_run(tmp_path, "rte-gwt", "rte", "gwt", 56.5, "accuracy")
    fake_run(tmp_path, "cola-galore", "cola", "galore", 12.25, "matthews_correlation")
    out = subprocess.run([sys.executable, str(ROOT / "scripts/glue_summary.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "| task | metric | train examples (steps x batch) | AdamW | GWT Haar-2 | GaLore-1/4 | GWT − AdamW |" in out
    assert "| rte | accuracy | 320 (20 x 16, 0.5 epoch) | 55.00 | 56.50 | — | +1.50 |" in out
    assert "| cola | matthews_correlation | 320 (20 x 16, 0.5 epoch) | — | — | 12.25 | — |" in out
    assert out.index("| cola |") < out.index("| rte |")  # the paper's task order
    assert (tmp_path / "summary.md").read_text().strip() == out.strip()


def test_summary_without_runs_is_an_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/glue_summary.py"), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no result.json" in proc.stderr
