"""Fault injection through the real entrypoint: a tiny train_llama run is SIGKILLed again and again (in
the middle of a checkpoint write, right after a checkpoint's rename, while writing a metrics line, at a
random moment, and between the final checkpoint and result.json), each time continued with
``resume=true``; it must end with exactly the result of an uninterrupted run.

The kills at fixed points use ``GWT_FAULT_POINT`` (gwt_lab/train/faults.py); the random one is a plain
SIGKILL from outside after a random delay (its seed is printed on failure)."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from gwt_lab.train import read_metrics, read_result
from tests.helpers import ROOT, TINY

pytestmark = pytest.mark.slow

COMMON = [*TINY, "trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.eval_every=2",
          "trainer.keep_last_checkpoints=2"]


def _launch(out, *extra, fault=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GWT_FAULT_POINT", None)
    if fault is not None:
        env["GWT_FAULT_POINT"] = fault
    return subprocess.Popen([sys.executable, "train_llama.py", *COMMON, f"output_dir={out}", *extra], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=600):
    text, _ = proc.communicate(timeout=timeout)
    return proc.returncode, text


def _steps_logged(out):
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = []
    for line in lines:
        try:
            steps.append(int(line.split('"step": ')[1].split(",")[0].split("}")[0]))
        except (IndexError, ValueError):
            pass
    return max(steps, default=0)


def _by_step(out):
    """{step: train loss} and {step: eval loss} (a re-evaluation after a resume must repeat the same value)."""
    train, evals = {}, {}
    for r in read_metrics(out / "metrics.jsonl"):
        for key, table in (("loss", train), ("eval_loss", evals)):
            if key in r:
                assert table.setdefault(r["step"], r[key]) == r[key], (key, r)
    return train, evals


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    ref_proc = _launch(tmp_path / "ref")  # runs alongside the interrupted chain
    try:
        _interrupted_chain(tmp_path, seed, rng, ref_proc)
    finally:
        if ref_proc.poll() is None:
            ref_proc.kill()
            ref_proc.communicate()


def _interrupted_chain(tmp_path, seed, rng, ref_proc):
    out = tmp_path / "chaos"
    log = []

    def stage(fault, resume=True):
        rc, text = _finish(_launch(out, *(["resume=true"] if resume else []), fault=fault))
        log.append(f"--- fault {fault}: exit {rc}\n{text[-1500:]}")
        assert rc == -signal.SIGKILL, f"seed {seed}: fault point {fault} was not reached\n" + "\n".join(log)

    # 1. killed inside the first checkpoint write: only a .tmp folder, which a resume ignores and removes
    stage("checkpoint_write:2", resume=False)
    assert list((out / "checkpoints").glob("*.tmp")) and not list((out / "checkpoints").glob("step_????????"))
    # 2. restarts from step 0, checkpoints step 2, killed half way through step 3's metrics line
    stage("metrics_partial:3")
    assert not (out / "metrics.jsonl").read_text().endswith("\n")
    # 3. resumes at step 2 (drops the torn line), killed right after step 4's checkpoint got its name
    stage("checkpoint_renamed:4")
    # 4. resumes at step 4, killed from outside at a random moment of training
    proc = _launch(out, "resume=true")
    deadline = time.time() + 300
    while proc.poll() is None and _steps_logged(out) <= 4 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.4))
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    rc, text = _finish(proc)
    log.append(f"--- random kill: exit {rc}\n{text[-1500:]}")
    if not (out / "result.json").exists():
        # 5. killed between the final checkpoint and result.json
        stage("result_write")
        assert not (out / "result.json").exists()
    # 6. the last resume finishes the run
    rc, text = _finish(_launch(out, "resume=true"))
    log.append(f"--- final resume: exit {rc}\n{text[-3000:]}")
    assert rc == 0, f"seed {seed}\n" + "\n".join(log)

    rc, text = _finish(ref_proc)
    assert rc == 0, text[-3000:]
    ref, got = read_result(tmp_path / "ref")["metrics"], read_result(out)["metrics"]
    for key in ("eval_loss", "eval_tokens", "steps", "tokens_seen", "final_train_loss"):
        assert got[key] == ref[key], (key, got[key], ref[key], f"seed {seed}", "\n".join(log))
    assert _by_step(out) == _by_step(tmp_path / "ref")  # every step's loss and every evaluation, bitwise
    assert not list((out / "checkpoints").glob("*.tmp"))
