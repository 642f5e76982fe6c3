"""Unit tests of gwt_lab.train: schedules, checkpoints, RNG restore, output-dir guard, metrics, results."""
import json
import math
import os
import random
import signal

import numpy as np
import pytest
import torch

from gwt_lab.train import (CheckpointManager, MetricsLogger, OutputDirError, StopSignal, build_scheduler,
                       check_output_dir, gradient_accumulation_steps, list_checkpoints, lr_multiplier,
                       peak_memory_bytes, read_metrics, read_result, rng_state, seed_everything, set_rng_state,
                       truncate_metrics, warmup_steps_from, write_result)


def _lrs(kind, total, warmup, min_ratio=None, base=2.0):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base)
    sched = build_scheduler(opt, kind, total, warmup, min_ratio)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_schedule_shape():
    lrs = _lrs("cosine", 100, 10, 0.1)
    assert lrs[0] == 0.0  # warm-up from 0
    assert lrs[5] == pytest.approx(1.0) and lrs[10] == pytest.approx(2.0)  # linear to the peak
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then monotone decay
    assert lrs[55] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # cosine midpoint
    assert lrs[-1] == pytest.approx(0.2, rel=1e-2)  # ends near 0.1x
    assert lr_multiplier("cosine", 100, 10, 0.1)(100) == pytest.approx(0.1)


def test_linear_schedule_without_warmup():
    lrs = _lrs("linear", 10, 0, None, base=1.0)
    assert lrs == pytest.approx([1.0 - i / 10 for i in range(10)])
    assert lr_multiplier("linear", 10)(10) == 0.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="cosinus", total_steps=10), "cosinus"),
    (dict(kind="cosine", total_steps=0), "total_steps"),
    (dict(kind="cosine", total_steps=10, warmup_steps=11), "warmup_steps"),
])
def test_schedule_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lr_multiplier(**kwargs)


def test_warmup_steps_from_ratio():
    assert warmup_steps_from(10000, None, 0.1) == 1000
    assert warmup_steps_from(10000, 7, 0.1) == 7


def test_gradient_accumulation():
    assert gradient_accumulation_steps(512, 16, 4) == 8
    with pytest.raises(ValueError, match=r"trainer.total_batch_size=512 is not divisible.*48 x 1"):
        gradient_accumulation_steps(512, 48, 1)
    with pytest.raises(ValueError, match="trainer.micro_batch_size=0"):
        gradient_accumulation_steps(512, 0, 1)


def test_rng_state_roundtrip():
    seed_everything(3)
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_checkpoint_atomic_rotation_and_weights_only_load(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    manager = CheckpointManager(tmp_path / "ckpt", keep_last=2)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "step_00000009.tmp").mkdir()  # a save interrupted earlier
    for step in (1, 2, 3):
        manager.save(step, {"model": model.state_dict(), "optimizer": opt.state_dict()},
                     {"rng": rng_state(), "data": {"docs": step}})
    names = [p.name for p in list_checkpoints(tmp_path / "ckpt")]
    assert names == ["step_00000002", "step_00000003"]
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
    shared, local, meta = manager.load()
    assert meta["step"] == 3 and local["data"] == {"docs": 3}
    torch.load(tmp_path / "ckpt" / "step_00000003" / "optimizer.pt", weights_only=True)
    opt2 = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=0.1)
    opt2.load_state_dict(shared["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="world_size|processes"):
        CheckpointManager(tmp_path / "ckpt", world_size=2, rank=0).load()


def test_output_dir_guard(tmp_path):
    check_output_dir(tmp_path / "new", resume=False)  # a fresh path is fine and not created
    assert not (tmp_path / "new").exists()
    (tmp_path / "run" / "checkpoints" / "step_00000005").mkdir(parents=True)
    with pytest.raises(OutputDirError, match="resume=true"):
        check_output_dir(tmp_path / "run", resume=False)
    state = check_output_dir(tmp_path / "run", resume=True)
    assert state.latest_checkpoint.name == "step_00000005"


def test_metrics_logger_and_truncate(tmp_path):
    seen = []
    logger = MetricsLogger(tmp_path / "metrics.jsonl")
    logger.add_sink(seen.append)
    for step in range(1, 5):
        logger.log({"step": step, "loss": torch.tensor(1.0 / step), "bad": float("nan")})
    logger.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[1]["loss"] == 0.5 and records[0]["bad"] == "nan"
    assert len(seen) == 4
    truncate_metrics(tmp_path / "metrics.jsonl", 2)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_write_result(tmp_path):
    path = write_result(tmp_path, {"a": 1}, {"eval_loss": 2.0}, run="x")
    result = read_result(tmp_path)
    assert path.name == "result.json" and result["config"] == {"a": 1} and result["metrics"]["eval_loss"] == 2.0
    assert "git_commit" in result and result["run"] == "x" and not (tmp_path / "result.json.tmp").exists()


def test_peak_memory_cpu():
    info = peak_memory_bytes("cpu")
    assert info["peak_memory_kind"] == "cpu_peak_rss" and info["peak_memory_bytes"] > 10 * 2**20


def test_stop_signal_records_and_restores():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested and stop.name == "SIGUSR1" and stop.exit_code() == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before
