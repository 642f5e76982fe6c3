"""Hostile files and flaky machines: checkpoints never run code, damaged checkpoints fall back to the
previous complete one, a full disk is reported, run folders are locked, metrics.jsonl survives a kill."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gwt_lab.train import CheckpointManager, MetricsLogger, read_metrics, truncate_metrics
from gwt_lab.train import checkpoint as checkpoint_module
from gwt_lab.train.checkpoint import (CheckpointError, CheckpointWarning, CheckpointWriteError,
                                      UnsafeCheckpointError, safe_load)
from gwt_lab.train.output_dir import LOCK_NAME, RunDirLockedError, lock_run_dir
from gwt_lab.train.safe_state import OBJECT_KEY, from_plain, to_plain
from gwt_lab.train.seeding import rng_state
from tests.helpers import ROOT


class RunsShell:
    """Pickles as a call of ``os.system`` (what a tampered checkpoint would hold)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _model_and_opt(name="adamw", seed=0, **options):
    from gwt.optim import build_optimizer

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16))
    if name == "adamw":
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, build_optimizer(model, name, lr=1e-2, target_modules="all_linear", **options)


def _train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=gen)
        (model(x) ** 2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _save_three(root, keep_last=3):
    manager = CheckpointManager(root, keep_last=keep_last)
    model, opt = _model_and_opt()
    for step in (1, 2, 3):
        _train(model, opt, 1, step)
        manager.save(step, {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": {"last": step}},
                     {"rng": rng_state(), "data": {"docs": step}})
    return manager


# ------------------------------------------------------------------------------------------ no code from files
def test_injected_reduce_in_a_checkpoint_never_runs(tmp_path):
    manager = _save_three(tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    newest = tmp_path / "ckpt" / "step_00000003"
    torch.save({"last": 3, "payload": RunsShell(f"touch {marker}")}, newest / "scheduler.pt")
    meta = json.loads((newest / "meta.json").read_text())  # keep the recorded size right: only the content is hostile
    meta["files"]["scheduler.pt"] = (newest / "scheduler.pt").stat().st_size
    (newest / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UnsafeCheckpointError, match=r"step_00000003/scheduler\.pt.*not plain") as exc:
        manager.load()
    assert not marker.exists()
    assert "\n" not in str(exc.value) and "GLOBAL posix.system" in str(exc.value)  # one line with the reason ...
    assert "add_safe_globals" not in str(exc.value) and "set to `False`" not in str(exc.value)  # ... no bad advice
    with pytest.raises(UnsafeCheckpointError):  # an explicit path does not fall back either
        manager.load(newest)
    assert not marker.exists()


def test_forged_object_record_names_only_allowed_classes(tmp_path):
    forged = {"state": {0: {"projector": {OBJECT_KEY: "os.system", "attrs": {}}}}}
    torch.save(forged, tmp_path / "optimizer.pt")
    with pytest.raises(UnsafeCheckpointError, match="os.system"):
        safe_load(tmp_path / "optimizer.pt")
    bad_attrs = {OBJECT_KEY: "galore_torch.galore_projector.GaLoreProjector", "attrs": {"__class__": 1}}
    with pytest.raises(ValueError, match="attributes"):
        from_plain(bad_attrs)
    with pytest.raises(TypeError, match=r"state\.x.*weights_only"):
        to_plain({"x": object()})


@pytest.mark.parametrize("name, options", [
    ("galore", {"update_proj_gap": 2}), ("apollo", {"update_proj_gap": 2}),
    ("apollo", {"proj": "svd", "update_proj_gap": 2}), ("fira", {"update_proj_gap": 2}), ("gwt", {}),
], ids=["galore", "apollo", "apollo_svd", "fira", "gwt"])
def test_projector_states_load_safely_and_resume_bitwise(tmp_path, name, options):
    pytest.importorskip({"galore": "galore_torch", "apollo": "apollo_torch", "fira": "fira", "gwt": "gwt"}[name])
    ref_model, ref_opt = _model_and_opt(name, **options)
    _train(ref_model, ref_opt, 3, 1)
    _train(ref_model, ref_opt, 3, 2)

    model, opt = _model_and_opt(name, **options)
    _train(model, opt, 3, 1)
    manager = CheckpointManager(tmp_path / "ckpt")
    path = manager.save(3, {"model": model.state_dict(), "optimizer": opt.state_dict()}, {"data": {}})
    raw = torch.load(path / "optimizer.pt", weights_only=True)  # plain torch, no allow-list needed
    assert all(not hasattr(v, "__dict__") or isinstance(v, torch.Tensor)
               for st in raw["state"].values() for v in st.values())
    shared, _, _ = manager.load()
    model2, opt2 = _model_and_opt(name, seed=5, **options)
    model2.load_state_dict(shared["model"])
    opt2.load_state_dict(shared["optimizer"])
    _train(model2, opt2, 3, 2)
    for a, b in zip(ref_model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ damaged files
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_bytes(path):  # same size, damaged content
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\x00" * 64
    data[:4] = b"XXXX"
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated_model": (lambda d: _truncate(d / "model.pt"), "model.pt has"),
    "empty_optimizer": (lambda d: (d / "optimizer.pt").write_bytes(b""), "optimizer.pt is empty"),
    "missing_rank_file": (lambda d: (d / "rank0.pt").unlink(), "rank0.pt is missing"),
    "missing_meta": (lambda d: (d / "meta.json").unlink(), "meta.json is missing"),
    "garbage_meta": (lambda d: (d / "meta.json").write_text('{"step": 3, "wor'), "meta.json is unreadable"),
    "corrupt_same_size": (lambda d: _flip_bytes(d / "model.pt"), "model.pt is damaged"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, case):
    manager = _save_three(tmp_path / "ckpt")
    damage, message = DAMAGE[case]
    damage(tmp_path / "ckpt" / "step_00000003")
    with pytest.warns(CheckpointWarning, match=message):
        shared, local, meta = manager.load()
    assert meta["step"] == 2 and local["data"] == {"docs": 2} and shared["scheduler"] == {"last": 2}
    assert meta["path"].endswith("step_00000002")
    with pytest.warns(CheckpointWarning, match=message):  # the folder the run found is tried first
        assert manager.load(tmp_path / "ckpt" / "step_00000003")[2]["step"] == 2


def test_no_usable_checkpoint_is_one_clear_error(tmp_path):
    manager = _save_three(tmp_path / "ckpt")
    for step in (1, 2, 3):
        (tmp_path / "ckpt" / f"step_0000000{step}" / "model.pt").write_bytes(b"")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="no usable checkpoint"):
        manager.load()


# ------------------------------------------------------------------------------------------ writing
def test_full_disk_is_reported_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    manager = _save_three(tmp_path / "ckpt")
    real_save = torch.save
    calls = []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second file of the checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointWriteError, match=f"no space left on {tmp_path / 'ckpt'}") as exc:
        manager.save(4, {"model": {"w": torch.ones(3)}, "optimizer": {}}, {"data": {}})
    assert exc.value.errno == errno.ENOSPC
    monkeypatch.setattr(torch, "save", real_save)
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
    assert [p.name for p in checkpoint_module.list_checkpoints(tmp_path / "ckpt")][-1] == "step_00000003"
    assert manager.load()[2]["step"] == 3


def test_stale_tmp_folders_are_removed_at_start(tmp_path):
    stale = tmp_path / "ckpt" / "step_00000007.tmp"
    stale.mkdir(parents=True)
    (stale / "model.pt").write_bytes(b"x" * 100)
    manager = CheckpointManager(tmp_path / "ckpt")
    assert stale.exists()  # creating a manager touches nothing: the folder may belong to a live run
    assert manager.remove_stale_tmp() == [stale] and not stale.exists()
    stale.mkdir()
    manager.save(8, {"model": {"w": torch.ones(1)}}, {"data": {}})  # every save clears them too
    assert not stale.exists() and manager.latest().name == "step_00000008"


def test_checkpoint_files_and_folder_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(str(src))))
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    CheckpointManager(tmp_path / "ckpt").save(5, {"model": {"w": torch.ones(2)}}, {"data": {}})
    renamed = events.index(("replace", "step_00000005.tmp"))
    synced_before = {name for kind, name in events[:renamed] if kind == "fsync"}
    assert {"model.pt", "rank0.pt", "meta.json", "step_00000005.tmp"} <= synced_before
    assert ("fsync", "ckpt") in events[renamed:]
    meta = json.loads((tmp_path / "ckpt" / "step_00000005" / "meta.json").read_text())
    assert meta["files"] == {n: (tmp_path / "ckpt" / "step_00000005" / n).stat().st_size
                             for n in ("model.pt", "rank0.pt")}


# ------------------------------------------------------------------------------------------ metrics.jsonl
def test_incomplete_last_metrics_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    with pytest.warns(UserWarning, match="incomplete last line 3"):
        assert [r["step"] for r in read_metrics(path)] == [1, 2]
    with pytest.warns(UserWarning):
        truncate_metrics(path, 2)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    logger = MetricsLogger(path)
    logger.log({"step": 3, "loss": 1.0})
    logger.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


def test_damaged_metrics_line_in_the_middle_names_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON line"):
        read_metrics(path)


# ------------------------------------------------------------------------------------------ run folder lock
_HOLD_LOCK = """
import sys, time
from gwt_lab.train.output_dir import lock_run_dir
lock = lock_run_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_run_folder_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    run_dir = tmp_path / "run"
    with lock_run_dir(run_dir) as lock:
        assert lock.held and (run_dir / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunDirLockedError, match=rf"output_dir {run_dir} is in use by another run \(pid {os.getpid()}\)"):
            lock_run_dir(run_dir)
    assert not (run_dir / LOCK_NAME).exists() and not lock.held
    lock_run_dir(run_dir).release()  # free again

    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLockedError, match=rf"\(pid {holder.pid}\)"):
            lock_run_dir(run_dir)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (run_dir / LOCK_NAME).exists()  # a dead run's lock file stays behind ...
    lock_run_dir(run_dir).release()        # ... and does not block


def test_run_suffix_differs_between_runs_and_is_shared_by_ranks(monkeypatch):
    from omegaconf import OmegaConf

    from gwt_lab.train import output_dir as od

    code = "from gwt_lab.train.output_dir import run_suffix; print(run_suffix())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "LOCAL_RANK"}
    a, b = (subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2))
    assert a and b and a != b  # two runs started at the same moment
    ranks = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "LOCAL_RANK": str(r)},
                            capture_output=True, text=True, check=True).stdout.strip() for r in range(2)}
    assert len(ranks) == 1 and ranks.pop().endswith(f"-{os.getpid()}")  # processes of one launcher agree
    monkeypatch.setattr(od, "_SUFFIX", None)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert od.run_suffix() == "job4242_3"
    monkeypatch.setattr(od, "_SUFFIX", None)
    cfg = OmegaConf.create({"output_dir": "outputs/x/${run_suffix:}"})
    assert cfg.output_dir == "outputs/x/job4242_3"
    monkeypatch.setattr(od, "_SUFFIX", None)


# ------------------------------------------------------------------------------------------ through the entrypoint
def _pretrain(out, *overrides):
    import train_llama
    from tests.helpers import compose_cfg, reset_accelerate

    reset_accelerate()
    try:
        return train_llama.train(compose_cfg([f"output_dir={out}", *overrides]))
    finally:
        reset_accelerate()


def _resize_in_meta(folder, name):
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"][name] = (folder / name).stat().st_size
    (folder / "meta.json").write_text(json.dumps(meta))


def test_resume_from_a_tampered_checkpoint_runs_no_code(tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    _pretrain(out)
    (out / "result.json").unlink()
    shutil.rmtree(out / "checkpoints" / "step_00000004")
    previous = out / "checkpoints" / "step_00000002"
    marker = tmp_path / "pwned"
    state = torch.load(previous / "scheduler.pt", weights_only=True)
    state["payload"] = RunsShell(f"touch {marker}")
    torch.save(state, previous / "scheduler.pt")
    _resize_in_meta(previous, "scheduler.pt")
    with pytest.raises((SystemExit, UnsafeCheckpointError)) as exc:
        _pretrain(out, "resume=true")
    message = capsys.readouterr().err if isinstance(exc.value, SystemExit) else str(exc.value)
    assert not marker.exists()
    assert "step_00000002/scheduler.pt" in message and "not plain" in message
    assert not (out / "result.json").exists()


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path):
    out = tmp_path / "run"
    first = _pretrain(out)
    (out / "result.json").unlink()
    _truncate(out / "checkpoints" / "step_00000004" / "optimizer.pt")  # e.g. a node lost before the data hit disk
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text() + '{"step": 5, "lo')  # and a torn line
    with pytest.warns(UserWarning) as seen:
        again = _pretrain(out, "resume=true")
    messages = [str(w.message) for w in seen]
    assert any("step_00000004/optimizer.pt has" in m and "truncated" in m for m in messages), messages
    assert any("incomplete last line" in m for m in messages), messages
    assert again["eval_loss"] == first["eval_loss"] and again["tokens_seen"] == first["tokens_seen"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]


def test_full_disk_during_a_run_is_one_clear_message(tmp_path, monkeypatch, capsys):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    out = tmp_path / "run"
    with pytest.raises((SystemExit, CheckpointWriteError)) as exc:
        _pretrain(out)
    message = capsys.readouterr().err if isinstance(exc.value, SystemExit) else str(exc.value)
    assert f"no space left on {out / 'checkpoints'}" in message
    assert not list((out / "checkpoints").glob("*")) and not (out / "result.json").exists()


@pytest.mark.parametrize("case", ["empty_texts", "not_gzip"])
def test_unusable_data_stops_the_entrypoint_before_writing(tmp_path, capsys, case):
    import gzip

    data = tmp_path / "data"
    data.mkdir()
    lines = "".join(json.dumps({"text": "" if case == "empty_texts" else "some words"}) + "\n" for _ in range(8))
    for split in ("train", "validation"):
        path = data / f"c4-{split}.00000-of-00001.json.gz"
        path.write_bytes(lines.encode() if case == "not_gzip" else gzip.compress(lines.encode()))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        _pretrain(out, f"data.dir={data}")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "c4-train.00000-of-00001.json.gz" in err or f"train shards of data.dir='{data}'" in err, err
    assert ("is empty" if case == "empty_texts" else "is not a gzip file") in err
    assert not out.exists()


def test_projectors_follow_their_parameters_device(tmp_path):
    pytest.importorskip("galore_torch")
    from gwt_lab.train.safe_state import place_projectors

    model, opt = _model_and_opt("galore", update_proj_gap=2)
    _train(model, opt, 2, 0)
    manager = CheckpointManager(tmp_path / "ckpt")
    manager.save(2, {"optimizer": opt.state_dict()}, {})
    shared, _, _ = manager.load()
    on_meta = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16)).to("meta")
    model2, opt2 = _model_and_opt("galore", update_proj_gap=2)
    to_meta = dict(zip(model2.parameters(), on_meta.parameters()))
    for group in opt2.param_groups:  # the same optimizer over the parameters on another device
        group["params"] = [to_meta[p] for p in group["params"]]
    opt2.load_state_dict(shared["optimizer"])
    projectors = [s["projector"] for s in opt2.state.values() if "projector" in s]
    assert projectors and all(p.ortho_matrix.device.type == "cpu" for p in projectors)  # load_state_dict leaves them
    assert place_projectors(opt2) == len(projectors)
    assert all(p.ortho_matrix.device.type == "meta" for p in projectors)


def test_checkpoint_of_another_process_count_is_refused_without_fallback(tmp_path):
    from gwt_lab.train.checkpoint import CheckpointMismatchError

    _save_three(tmp_path / "ckpt")
    with pytest.raises(CheckpointMismatchError, match="written by 1 processes but this run has 2"):
        CheckpointManager(tmp_path / "ckpt", rank=0, world_size=2).load()
    (tmp_path / "ckpt" / "step_00000003" / "meta.json").write_text('{"step": -3, "world_size": 1}')
    with pytest.warns(CheckpointWarning, match="no non-negative integer 'step'"):
        assert CheckpointManager(tmp_path / "ckpt").load()[2]["step"] == 2
    (tmp_path / "ckpt" / "step_00000003" / "meta.json").write_text('{"step": 3, "world_size": 10000000000}')
    with pytest.warns(CheckpointWarning, match="'world_size' must be a positive integer"):
        assert CheckpointManager(tmp_path / "ckpt").load()[2]["step"] == 2


def _registered_optimizers():
    from gwt.optim.registry import _REGISTRY

    return sorted(_REGISTRY)


@pytest.mark.parametrize("name", _registered_optimizers())
def test_every_registered_optimizer_checkpoints_as_plain_data(tmp_path, name):
    """Whatever optimizer= a run uses, its checkpoint loads with plain weights_only=True and resumes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from gwt.optim import build_optimizer

    def build():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=16))
        try:
            return model, build_optimizer(model, name, lr=1e-3)
        except ValueError as err:
            if "needs the package" in str(err):
                pytest.skip(str(err))
            raise

    def steps(model, opt, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(2):
            ids = torch.randint(0, 64, (2, 8), generator=gen)
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    model, opt = build()
    steps(model, opt, 0)
    path = CheckpointManager(tmp_path / "ckpt").save(2, {"model": model.state_dict(), "optimizer": opt.state_dict()}, {})
    torch.load(path / "optimizer.pt", weights_only=True)
    shared, _, _ = CheckpointManager(tmp_path / "ckpt").load()
    model2, opt2 = build()
    model2.load_state_dict(shared["model"])
    opt2.load_state_dict(shared["optimizer"])
    steps(model, opt, 1)
    steps(model2, opt2, 1)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
