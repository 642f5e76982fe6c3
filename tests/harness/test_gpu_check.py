"""scripts/gpu_check.py: its dry run (every phase at tiny sizes on CPU) and its input checks."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def run(*args, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run into a folder that already holds an earlier check (which must be kept)."""
    out = tmp_path_factory.mktemp("gpu") / "check"
    out.mkdir()
    (out / "gpu_check.json").write_text(json.dumps({"started_at": "2026-01-02T03:04:05+00:00"}))
    (out / "gpu_check.md").write_text("earlier\n")
    proc = run("--dry-run", "--out", str(out))
    return out, proc


@pytest.mark.slow
def test_dry_run_runs_every_phase_and_reports(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["dry_run"] is True and len(data["commit"]) >= 7 and data["machine"]["torch"] == torch.__version__
    assert list(data["phases"]) == ["tests", "bench", "train", "glue"]
    assert {name: p["status"] for name, p in data["phases"].items()} == dict.fromkeys(data["phases"], "ok")
    tests = data["phases"]["tests"]
    assert "tests/lib/test_triton.py" in tests["files"]
    assert sum(tests["counts"].get(k, 0) for k in ("passed", "skipped")) > 0 and not tests["counts"].get("failed")
    rows = data["phases"]["bench"]["rows"]
    methods = {r["method"].partition("@")[0] for r in rows}
    assert {"adamw_fused", "gwt_haar2", "gwt_db2_2", "galore", "apollo"} <= methods
    assert all(r["step_ms"] > 0 and r["size"] == "20m" for r in rows)
    train = data["phases"]["train"]
    runs = train["runs"]
    assert list(runs) == ["adamw", "gwt_haar2", "galore_1_4"]
    for r in runs.values():
        assert r["status"] == "ok" and r["steps"] == 2 and math.isfinite(r["final_train_loss"])
        assert r["tokens_per_s_steady"] > 0 and r["peak_memory_bytes"] > 0
    # GWT's states are a quarter of Adam's on the transformed matrices: less state in total
    assert runs["gwt_haar2"]["optimizer_state_bytes"] < runs["adamw"]["optimizer_state_bytes"]
    assert runs["adamw"]["tokens_per_s_vs_adamw"] == 1.0
    for search in train["max_micro_batch"].values():
        assert search["max_micro_batch"] == 4 and search["capped"] and search["tried"] == {"1": True, "2": True,
                                                                                            "4": True}
    glue = data["phases"]["glue"]
    assert glue["steps"] == 2 and 0 <= glue["score"] <= 100
    md = (out / "gpu_check.md").read_text()
    assert data["commit"] in md and "| gwt_haar2 |" in md and "## Pre-training" in md
    assert "GPU check on CPU (dry run)" in proc.stdout and "train gwt_haar2:" in proc.stdout
    # the earlier check was moved aside, not overwritten
    previous = out / "previous-2026-01-02t03-04-05-00-00"
    assert (previous / "gpu_check.md").read_text() == "earlier\n"


@pytest.mark.parametrize("args,message", [
    (["--dry-run", "--phases", "bench", "bogus"], "--phases: 'bogus' is not a phase; valid: tests, bench, train, glue"),
    (["--dry-run", "--time-scale", "0"], "--time-scale=0.0: valid: a number > 0"),
])
def test_bad_arguments_exit_2_before_any_work(tmp_path, args, message):
    proc = run(*args, "--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_gpu_the_full_check_refuses(tmp_path):
    proc = run("--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_benchmark_keeps_measuring_when_one_method_fails(monkeypatch):
    """A method that cannot build or step (e.g. a graph capture a driver refuses) is reported as
    failed with its error; the other methods of the size are still measured."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_optimizer_under_test", ROOT / "scripts" / "bench_optimizer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    class Broken:
        state: dict = {}

        def __init__(self, params):
            pass

        def step(self):
            raise RuntimeError("operation not permitted when stream is capturing")

    def builders(hidden, gap, backends):
        return {"adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3), "broken@step": Broken,
                "broken@build": lambda ps: (_ for _ in ()).throw(ValueError("no such backend here"))}

    monkeypatch.setattr(bench, "method_builders", builders)
    monkeypatch.setitem(bench.SIZES, "tiny", (16, 32, 1))
    rows = {r["method"]: r for r in bench.bench_size("tiny", torch.device("cpu"),
                                                      ["adamw_fused", "broken@step", "broken@build"], 2, 1, 200)}
    assert rows["adamw_fused"]["step_ms"] > 0 and rows["adamw_fused"]["vs_fused"] == 1.0
    assert rows["broken@step"]["step_ms"] is None and "stream is capturing" in rows["broken@step"]["error"]
    assert rows["broken@build"]["step_ms"] is None and "no such backend" in rows["broken@build"]["error"]
