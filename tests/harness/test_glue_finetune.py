"""finetune_glue.py end to end with roberta_tiny on the local GLUE TSVs: result.json contents,
bad-input errors before any work, and resume after SIGTERM (slow)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import finetune_glue  # noqa: E402
from tests.helpers import torchrun  # noqa: E402

TINY = ["model=roberta_tiny", "logger=none", "trainer.max_length=32", "data.max_train_examples=32",
        "data.max_eval_examples=24", "trainer.epochs=2", "trainer.log_every=1"]


def cfg_for(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="finetune_glue", overrides=list(overrides))


def metrics_lines(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_writes_per_epoch_final_and_best(tmp_path):
    out = tmp_path / "rte"
    metrics = finetune_glue.run(cfg_for("task=rte", *TINY, f"output_dir={out}"))
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"] == json.loads(json.dumps(metrics))
    m = result["metrics"]
    assert m["steps"] == 4 and m["epochs"] == 2.0 and m["train_examples"] == 32  # 32 // 16 = 2 steps per epoch
    assert [e["step"] for e in m["per_epoch"]] == [2, 4] and [e["epoch"] for e in m["per_epoch"]] == [1.0, 2.0]
    assert m["final"] == m["per_epoch"][-1] and m["best"]["score"] == max(e["score"] for e in m["per_epoch"])
    assert m["score"] == m["accuracy"] == m["final"]["accuracy"] and 0 <= m["score"] <= 100
    assert m["optimizer_state_bytes"] > 0 and m["peak_memory_bytes"] > 0
    cfg = result["config"]
    assert cfg["optimizer"]["name"] == "gwt" and cfg["optimizer"]["target_modules"] == "encoder_linear"
    assert cfg["optimizer"]["alpha"] == 2.0 and cfg["optimizer"]["level"] == 2 and cfg["optimizer"]["lr"] == 3e-6
    assert cfg["seed"] == 1234 and cfg["trainer"]["scheduler"] == "linear" and cfg["trainer"]["warmup_steps"] == 0
    assert result["git_commit"] and (out / "config.yaml").is_file()
    lines = metrics_lines(out)
    train = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert train[0]["lr"] == pytest.approx(3e-6) and train[-1]["lr"] == pytest.approx(3e-6 / 4)  # linear, no warm-up
    assert [r["step"] for r in lines if "eval_score" in r] == [2, 4]
    # a second start in the same folder is refused, a resume of a finished run does nothing
    with pytest.raises(SystemExit):
        finetune_glue.run(cfg_for("task=rte", *TINY, f"output_dir={out}"))
    assert finetune_glue.run(cfg_for("task=rte", *TINY, f"output_dir={out}", "resume=true")) is None


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(r) + "\n" for r in rows))


def test_mnli_matched_and_mismatched_with_accumulation(tmp_path):
    """MNLI from a hand-written folder in the GLUE layout; micro-batches of 4 -> 4 accumulation steps."""
    head = ["index", "promptID", "pairID", "genre", "a", "b", "c", "d", "sentence1", "sentence2"]
    labels = ["entailment", "neutral", "contradiction"]
    rows = [["0"] * 8 + [f"premise number {i}", f"hypothesis {i % 5}", "x", labels[i % 3]] for i in range(16)]
    _write(tmp_path / "glue/MNLI/train.tsv", [head + ["label1", "gold_label"]] + rows)
    for name in ("dev_matched", "dev_mismatched"):
        _write(tmp_path / f"glue/MNLI/{name}.tsv", [head + ["label1", "gold_label"]] + rows[:6])
    out = tmp_path / "mnli"
    m = finetune_glue.run(cfg_for("task=mnli", *TINY, "trainer.micro_batch_size=4", "trainer.epochs=1",
                                  f"data.dir={tmp_path / 'glue'}", f"output_dir={out}"))
    assert {"accuracy_matched", "accuracy_mismatched"} <= set(m) and m["score"] == m["accuracy_matched"]
    assert m["steps"] == 1


@pytest.mark.parametrize("overrides,message", [
    (["task=mnli"], "MNLI/train.tsv is missing"),
    (["task=qnli"], "QNLI/train.tsv is missing"),
    (["task=rte", "+optimizer.rank=4"], "optimizer.rank is not an option of optimizer 'gwt'"),
    (["task=rte", "optimizer.name=sgdx"], "optimizer.name='sgdx' is unknown; valid: adamw"),
    (["task=rte", "trainer.micro_batch_size=5"], "trainer.total_batch_size=16 is not divisible"),
    (["task=rte", "trainer.epochs=0"], "trainer.epochs=0 must be a positive integer"),
    (["task=rte", "precision=fp8"], "precision='fp8' is unknown; choose one of ['fp32', 'bf16']"),
    (["task=rte", "task.num_labels=3"], "do not match GLUE 'rte'"),
    (["task=rte", "data.dir=/nonexistent/glue"], "local GLUE folder not found: '/nonexistent/glue'"),
    (["task=rte", "model.tokenizer=/nonexistent/tok"], "model.tokenizer='/nonexistent/tok': no such folder"),
    (["task=rte", "optimizer.level=12"], "level=12 is too deep"),
])
def test_bad_inputs_fail_before_writing(tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        finetune_glue.run(cfg_for(*TINY, *overrides, f"output_dir={out}"))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_other_runs_folder_is_not_touched(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 7}\n')
    with pytest.raises(SystemExit):
        finetune_glue.run(cfg_for("task=rte", *TINY, f"output_dir={out}"))
    assert "already holds another run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == '{"step": 7}\n'


def test_task_is_required_and_checked_by_hydra():
    with pytest.raises(ConfigCompositionException, match="You must specify 'task'"):
        cfg_for("model=roberta_tiny")
    with pytest.raises(MissingConfigException, match="task/boolq"):
        cfg_for("task=boolq")


def _launch(out, *extra):
    cmd = [sys.executable, str(ROOT / "finetune_glue.py"), "task=rte", *TINY, "trainer.epochs=5",
           f"output_dir={out}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runs side by side on a 2-core machine
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    ref = _launch(full)
    # the same run, stopped by SIGTERM once it has logged step 3, then resumed
    proc = _launch(split)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (split / "metrics.jsonl").exists() and any(r["step"] >= 3 for r in metrics_lines(split)):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    log = proc.communicate(timeout=240)[0]
    assert proc.returncode == 128 + signal.SIGTERM, log
    assert "stopped by signal" in log and not (split / "result.json").exists()
    assert (split / "checkpoints").is_dir()
    resumed = _launch(split, "resume=true")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert "resumed from" in log
    assert ref.wait(timeout=300) == 0
    losses = lambda d: [(r["step"], r["loss"]) for r in metrics_lines(d) if "loss" in r]  # noqa: E731
    assert losses(split) == losses(full) and len(losses(full)) == 10  # bitwise equal per-step losses
    res_full, res_split = (json.loads((d / "result.json").read_text())["metrics"] for d in (full, split))
    assert res_split["per_epoch"] == res_full["per_epoch"] and len(res_full["per_epoch"]) == 5


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(tmp_path):
    """2 CPU processes (gloo, torchrun) x micro-batch 8 against 1 process x 16, dropout off:
    per-step losses agree to 1e-5 relative (only float summation order differs)."""
    args = ["task=rte", *TINY, "trainer.epochs=1", "model.dropout=0.0", "cpu=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(ROOT / "finetune_glue.py"), *args, f"output_dir={tmp_path / 'one'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun(ROOT / "finetune_glue.py", [*args, f"output_dir={tmp_path / 'two'}"], tmp_path / "logs", env=env, timeout=300)
    losses = {d: [r["loss"] for r in metrics_lines(tmp_path / d) if "loss" in r] for d in ("one", "two")}
    assert len(losses["one"]) == 2 and losses["two"] == pytest.approx(losses["one"], rel=1e-5)
    results = {d: json.loads((tmp_path / d / "result.json").read_text())["metrics"] for d in ("one", "two")}
    assert results["two"]["world_size"] == 2 and results["one"]["world_size"] == 1
    # evaluation is shared out over the processes and gathered: same examples, same metric
    assert results["two"]["score"] == pytest.approx(results["one"]["score"], abs=100 / 24 + 1e-9)
