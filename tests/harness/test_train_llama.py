"""train_llama.py end to end on llama_tiny (CPU, fp32): outputs, evaluation, bad input, non-finite loss,
SIGTERM + resume (bitwise), and 2 processes (gloo) against 1 process at the same global batch."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import train_llama
from gwt_lab.data.lm import TextSource, eval_batches, epoch_documents, load_tokenizer
from gwt_lab.models import LLAMA_ARCH_KEYS, build_llama
from gwt_lab.train import causal_lm_loss_sum, read_metrics, read_result
from tests.helpers import ROOT, compose_cfg, reset_accelerate, torchrun


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()


def run(tmp, *overrides):
    cfg = compose_cfg([f"output_dir={tmp}", *overrides])
    return train_llama.train(cfg)


def test_tiny_run_writes_metrics_and_result(tmp_path):
    out = tmp_path / "run"
    metrics = run(out, "optimizer=gwt", "logger=wandb")  # WANDB_MODE=disabled in tests: init path only
    lines = read_metrics(out / "metrics.jsonl")
    train_lines = [r for r in lines if "loss" in r]
    eval_lines = [r for r in lines if "eval_loss" in r]
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4] and [r["step"] for r in eval_lines] == [2, 4]
    assert all({"lr", "tokens_seen", "tokens_per_s"} <= set(r) for r in train_lines)
    lrs = [r["lr"] for r in train_lines]  # 10% of 4 steps = no warm-up: peak lr 1e-2, then cosine decay
    assert lrs[0] == pytest.approx(0.01) and lrs == sorted(lrs, reverse=True)
    result = read_result(out)
    m = result["metrics"]
    for key in ("eval_loss", "eval_ppl", "tokens_seen", "train_tokens_per_s", "optimizer_state_bytes",
                "peak_memory_bytes"):
        assert key in m, key
    assert m["eval_ppl"] == pytest.approx(torch.tensor(m["eval_loss"]).exp().item(), rel=1e-6)
    assert m["tokens_seen"] == train_lines[-1]["tokens_seen"] and metrics["steps"] == 4
    assert result["config"]["optimizer"]["name"] == "gwt" and result["git_commit"]
    assert (out / "config.yaml").exists() and len(list((out / "checkpoints").iterdir())) == 2


@pytest.mark.slow
def test_eval_loss_is_the_per_token_mean(tmp_path):
    """Recompute the final eval from the saved final weights: sum of token losses / number of tokens."""
    out = tmp_path / "run"
    m = run(out, "trainer.eval_tokens=300", "trainer.micro_batch_size=1")
    cfg = compose_cfg([f"output_dir={out}"])
    model = build_llama(**{k: cfg.model[k] for k in LLAMA_ARCH_KEYS})
    model.load_state_dict(torch.load(out / "checkpoints" / "step_00000004" / "model.pt", weights_only=True))
    model.eval()
    src = TextSource(source="local", dir=cfg.data.dir)
    batches = eval_batches(epoch_documents(src, "validation", 42, cfg.data.shuffle_buffer)(0), load_tokenizer("t5-base"),
                           32, 1, 300, vocab_size=cfg.model.vocab_size)
    total, count, batch_means = 0.0, 0, []
    with torch.no_grad():
        for b in batches:  # HF's own mean loss per batch, weighted back by its token count
            n = int((b["labels"][:, 1:] != -100).sum())
            mean = model(input_ids=b["input_ids"], labels=b["labels"]).loss.item()
            total, count = total + mean * n, count + n
            batch_means.append(mean)
    assert count == 300 == m["eval_tokens"]
    assert m["eval_loss"] == pytest.approx(total / count, rel=1e-5)
    # the mean of batch means (what per-batch averaging gives) is a different number here
    assert abs(sum(batch_means) / len(batch_means) - total / count) > 1e-4


BAD_INPUTS = [
    (["data.dir=/no/such/folder"], "data.dir='/no/such/folder'"),
    (["data.dir={empty}"], "no non-empty train shard"),
    (["tokenizer=/no/such/tokenizer"], "tokenizer='/no/such/tokenizer'"),
    (["tokenizer=not-a-hub-tokenizer-xyz"], "tokenizer='not-a-hub-tokenizer-xyz'"),
    (["trainer.total_batch_size=6", "trainer.micro_batch_size=4"], "trainer.total_batch_size=6 is not divisible"),
    (["optimizer=gwt", "optimizer.level=9"], "level"),
    (["optimizer=gwt", "optimizer.wavelet=haarr"], "haarr"),
    (["data.source=ftp"], "data.source='ftp'"),
    (["precision=fp8"], "precision='fp8'"),
    (["trainer.seq_len=4096"], "trainer.seq_len=4096"),
    (["trainer.scheduler=cosine_restarts"], "scheduler='cosine_restarts'"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_fails_before_writing(tmp_path, capsys, overrides, message):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    overrides = [o.replace("{empty}", str(tmp_path / "empty")) for o in overrides]
    with pytest.raises(SystemExit) as exc:
        run(out, *overrides)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_output_dir_of_another_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / "step_00000002").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(SystemExit):
        run(out)
    assert "resume=true" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_unknown_group_option_lists_choices():
    from hydra.errors import MissingConfigException

    for group, bad in (("model", "llama_3b"), ("optimizer", "sgdd"), ("data", "pile")):
        with pytest.raises(MissingConfigException) as exc:
            compose_cfg([f"{group}={bad}"])
        assert bad in str(exc.value) and "Available options" in str(exc.value)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        run(out, "optimizer.lr=1e30", "trainer.warmup_ratio=0", "trainer.checkpoint_every=1",
            "trainer.max_steps=6", "trainer.eval_every=100")
    assert exc.value.code == 1 and "non-finite training loss" in capsys.readouterr().err
    assert not (out / "result.json").exists()
    steps = [int(p.name.split("_")[1]) for p in (out / "checkpoints").iterdir()]
    logged = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps and max(steps) == max(logged) < 6  # the bad step was neither applied nor saved


@pytest.mark.slow
def test_sigterm_then_resume_is_bitwise_identical(tmp_path):
    common = ["optimizer=gwt", "trainer.max_steps=12", "trainer.eval_every=4", "trainer.checkpoint_every=0",
              "trainer.total_batch_size=8", "trainer.micro_batch_size=4", "trainer.seq_len=64"]
    ref = run(tmp_path / "ref", *common)
    out = tmp_path / "stopped"

    def send_sigterm_after_step_5():
        while not any(r.get("step", 0) >= 5 for r in read_metrics(out / "metrics.jsonl")):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=send_sigterm_after_step_5, daemon=True)
    killer.start()
    with pytest.raises(SystemExit) as exc:
        run(out, *common)
    killer.join()
    assert exc.value.code == 128 + signal.SIGTERM
    stopped_at = max(r["step"] for r in read_metrics(out / "metrics.jsonl"))
    assert 5 <= stopped_at < 12 and not (out / "result.json").exists()
    reset_accelerate()
    resumed = run(out, *common, "resume=true")
    lines = read_metrics(out / "metrics.jsonl")
    ref_lines = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert [r["step"] for r in lines] == [r["step"] for r in ref_lines]
    assert [r.get("loss") for r in lines] == [r.get("loss") for r in ref_lines]  # bitwise (same floats)
    assert [r.get("eval_loss") for r in lines] == [r.get("eval_loss") for r in ref_lines]
    assert resumed["eval_loss"] == ref["eval_loss"] and resumed["tokens_seen"] == ref["tokens_seen"]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """torchrun 2 CPU processes (gloo), micro-batch 2 x 2 accumulation vs 1 process micro-batch 4 x 2:
    the same 8 documents per step, losses normalised by the global token count. Tolerance: relative 1e-4
    on every step's loss and on the final eval loss (only float summation order differs)."""
    common = ["model=llama_tiny", "optimizer=gwt", "data=c4_local", "logger=none", "precision=fp32", "cpu=true",
              "trainer.max_steps=4", "trainer.total_batch_size=8", "trainer.seq_len=32", "trainer.eval_every=4",
              "trainer.eval_tokens=1000000", "trainer.checkpoint_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "train_llama.py", *common, "trainer.micro_batch_size=4",
                          f"output_dir={tmp_path / 'one'}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun("train_llama.py", [*common, "trainer.micro_batch_size=2", f"output_dir={tmp_path / 'two'}"],
             tmp_path / "logs", env=env)
    a, b = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert read_result(tmp_path / "two")["metrics"]["world_size"] == 2
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "eval_loss", "tokens_seen", "eval_tokens"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-4), (ra, rb)


@pytest.mark.slow
def test_pretrain_summary_tables(tmp_path):
    """scripts/pretrain_summary.py renders the run folders' own numbers."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import pretrain_summary

    for name in ("adamw", "gwt"):
        run(tmp_path / "imdb" / name, f"optimizer={name}", "trainer.max_steps=2", "trainer.checkpoint_every=0")
        reset_accelerate()
    text = pretrain_summary.render(tmp_path)
    results = {n: read_result(tmp_path / "imdb" / n)["metrics"] for n in ("adamw", "gwt")}
    assert "| Full-Rank |" in text and "| Haar-2 |" in text
    for m in results.values():
        assert f"{m['eval_loss']:.4f}" in text and f"{m['tokens_seen']:,}" in text


def test_a_failed_rank_shows_its_own_output(tmp_path):
    """The torchrun helper of the multi-process tests: when a rank dies by a signal, the failure
    names it with that rank's own last lines and its Python stack (not just the launcher's summary)."""
    script = tmp_path / "abort_on_rank_1.py"
    script.write_text("import os\nprint('rank', os.environ['RANK'], 'started', flush=True)\n"
                      "if os.environ['RANK'] == '1':\n    os.abort()\n")
    with pytest.raises(AssertionError) as failed:
        torchrun(script, [], tmp_path / "logs")
    text = str(failed.value)
    assert "rank 1 started" in text and "Fatal Python error: Aborted" in text and "abort_on_rank_1.py" in text
