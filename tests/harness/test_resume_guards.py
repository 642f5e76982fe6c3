"""Loop-level reliability of both entrypoints (gwt_lab/loop.py): a resumed run keeps the config its
checkpoint was written with, checkpoints hold only finite values, a run stopped between its last
checkpoint and result.json finishes on resume, bad config values fail in one line before any
file is written, and the shared behaviour (gradient clipping, `command`, `tokenizer=`) holds in
both entrypoints."""
import pytest
import torch

import finetune_glue
import train_llama
from gwt_lab.train import read_metrics, read_result
from gwt_lab.train.output_dir import lock_run_dir
from tests.helpers import compose_cfg, compose_glue_cfg, fresh_accelerate, reset_accelerate  # noqa: F401

pytestmark = pytest.mark.usefixtures("fresh_accelerate")
GLUE_TINY = ["task=rte", "model=roberta_tiny", "optimizer=adamw", "logger=none", "trainer.max_length=32",
             "data.max_train_examples=32", "data.max_eval_examples=8", "trainer.log_every=1"]


def pretrain(out, *overrides):
    reset_accelerate()
    return train_llama.train(compose_cfg([f"output_dir={out}", *overrides]))


def finetune(out, *overrides):
    reset_accelerate()
    return finetune_glue.run(compose_glue_cfg(*GLUE_TINY, f"output_dir={out}", *overrides))


def exit_code(fn, *args):
    with pytest.raises(SystemExit) as exc:
        fn(*args)
    return exc.value.code


def snapshot(out):
    """Every file under ``out`` with its bytes."""
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def stopped_gwt_run(tmp_path_factory):
    """A finished 4-step GWT (Haar level 2) run whose result.json is gone, as if killed right after its
    final checkpoint: resumable, with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("gwt") / "run"
    reset_accelerate()
    ref = train_llama.train(compose_cfg([f"output_dir={out}", "optimizer=gwt"]))
    (out / "result.json").unlink()
    return out, ref


@pytest.mark.parametrize("overrides, changes", [
    (["optimizer.level=1"], ["optimizer.level: 2 -> 1"]),
    (["trainer.max_steps=8"], ["trainer.max_steps: 4 -> 8"]),
    (["optimizer=galore"], ["optimizer.name: 'gwt' -> 'galore'", "optimizer.rank: (absent) -> "]),
    (["optimizer.lr=0.02", "seed=1"], ["optimizer.lr: 0.01 -> 0.02", "seed: 42 -> 1"]),
])
def test_resume_refuses_a_config_that_changes_the_computation(stopped_gwt_run, capsys, overrides, changes):
    out, _ = stopped_gwt_run
    before = snapshot(out)
    capsys.readouterr()
    assert exit_code(pretrain, out, "optimizer=gwt", "resume=true", *overrides) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and all(change in err[0] for change in changes), err
    assert snapshot(out) == before  # config.yaml, metrics and checkpoints untouched


def test_final_checkpoint_without_result_resumes_to_the_result(stopped_gwt_run, capsys):
    """Keys on the allow-list (logging, evaluation and checkpoint cadence) may change on resume; the run
    stopped after its final checkpoint writes the same result without training or logging again."""
    out, ref = stopped_gwt_run
    lines = read_metrics(out / "metrics.jsonl")
    resumed = pretrain(out, "optimizer=gwt", "resume=true", "trainer.log_every=3", "trainer.eval_every=1",
                       "trainer.keep_last_checkpoints=3", "logger=wandb")
    assert "resumed from" in capsys.readouterr().out
    for key in ("eval_loss", "eval_ppl", "eval_tokens", "steps", "tokens_seen", "final_train_loss"):
        assert resumed[key] == ref[key], key
    assert read_result(out)["metrics"]["eval_loss"] == ref["eval_loss"]
    assert read_metrics(out / "metrics.jsonl") == lines  # nothing trained, evaluated or logged twice


@pytest.mark.parametrize("overrides", [
    ["optimizer=adamw", "optimizer.lr=1e39"],
    ["optimizer=gwt", "optimizer.lr=1e39"],
], ids=["adamw_lr_1e39", "gwt_lr_1e39"])
def test_checkpoints_hold_only_finite_weights_and_states(tmp_path, capsys, overrides):
    out = tmp_path / "run"
    code = exit_code(pretrain, out, *overrides, "trainer.checkpoint_every=1", "trainer.warmup_ratio=0")
    err = capsys.readouterr().err
    assert code == 1 and "non-finite" in err
    assert "non-finite weights or optimizer state after step 1" in err and "no checkpoint was written" in err
    for ckpt in (out / "checkpoints").glob("step_*"):  # whatever was written holds finite numbers only
        for name in ("model.pt", "optimizer.pt"):
            tensors = [t for t in _tensors(torch.load(ckpt / name, weights_only=True)) if t.is_floating_point()]
            assert all(torch.isfinite(t).all() for t in tensors), (ckpt, name)
    assert not (out / "result.json").exists()


def _tensors(tree):
    if torch.is_tensor(tree):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _tensors(value)


BAD_VALUES = [
    (pretrain, "trainer.seq_len=two", "trainer.seq_len='two' must be a positive integer"),
    (pretrain, "trainer.checkpoint_every=-1", "trainer.checkpoint_every=-1 must be an integer >= 0"),
    (pretrain, "trainer.grad_clip=-1.0", "trainer.grad_clip=-1.0 must be a number >= 0"),
    (pretrain, "trainer.grad_clip=big", "trainer.grad_clip='big' must be a number >= 0"),
    (pretrain, "trainer.keep_last_checkpoints=0", "trainer.keep_last_checkpoints=0 must be a positive integer"),
    (pretrain, "+trainer.eval_evry=1", "trainer.eval_evry is not a config key; did you mean trainer.eval_every?"),
    (pretrain, "+data.shufle_seed=1", "data.shufle_seed is not a config key; did you mean data.shuffle_seed?"),
    (pretrain, "+model.hidden_sise=8", "model.hidden_sise is not a config key; did you mean model.hidden_size?"),
    (pretrain, "optimizer.lr=abc", "optimizer.lr='abc' must be a number >= 0"),
    (pretrain, "seed=x", "seed='x' must be an integer >= 0"),
    (pretrain, "trainer.max_steps=???", "trainer.max_steps: Missing mandatory value"),
    (finetune, "model=llama_tiny", "tokenizer: Interpolation key 'model.tokenizer' not found"),
    (finetune, "+trainer.eval_evry=1", "trainer.eval_evry is not a config key; did you mean trainer.eval_every?"),
    (finetune, "optimizer.lr=abc", "optimizer.lr='abc' must be a number >= 0"),
    (finetune, "trainer.grad_clip=-2", "trainer.grad_clip=-2 must be a number >= 0"),
    (finetune, "trainer.checkpoint_every=-1", "trainer.checkpoint_every=-1 must be an integer >= 0 or null"),
    (finetune, "+model.hiden_size=8", "model.hiden_size is not a config key; did you mean model.hidden_size?"),
    (finetune, "+data.max_eval=8", "data.max_eval is not a config key; did you mean data.max_eval_examples?"),
    (finetune, "tokenizer=/nonexistent/tok", "tokenizer='/nonexistent/tok': no such folder"),
]


@pytest.mark.parametrize("entry, override, message", BAD_VALUES,
                         ids=[f"{e.__name__}-{o}" for e, o, _ in BAD_VALUES])
def test_bad_config_values_fail_in_one_line_before_writing(tmp_path, capsys, entry, override, message):
    out = tmp_path / "run"
    assert exit_code(entry, out, override) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists()


def test_glue_resume_refuses_a_changed_learning_rate(tmp_path, capsys):
    """Stopped after epoch 1 of 2 (its checkpoint), then resumed with another lr: refused, nothing written."""
    out = tmp_path / "rte"
    finetune(out, "trainer.epochs=2")
    (out / "result.json").unlink()
    before = snapshot(out)
    assert exit_code(finetune, out, "trainer.epochs=2", "resume=true", "optimizer.lr=1e-3") == 2
    assert "optimizer.lr: 3e-06 -> 0.001" in capsys.readouterr().err
    assert snapshot(out) == before


def test_gradient_clipping_and_command_in_both_entrypoints(tmp_path):
    """trainer.grad_clip changes the updates (a tiny max norm makes Adam's eps dominate) in both
    entrypoints, and both record the command line in result.json."""
    losses = {}
    for name, clip in (("free", "0.0"), ("clipped", "1e-12")):
        pretrain(tmp_path / f"lm_{name}", "trainer.checkpoint_every=0", f"trainer.grad_clip={clip}")
        finetune(tmp_path / f"glue_{name}", "trainer.max_steps=3", f"trainer.grad_clip={clip}")
        losses[name] = {kind: [r["loss"] for r in read_metrics(tmp_path / f"{kind}_{name}" / "metrics.jsonl")
                               if "loss" in r] for kind in ("lm", "glue")}
    for kind in ("lm", "glue"):
        free, clipped = losses["free"][kind], losses["clipped"][kind]
        assert free[0] == clipped[0] and free[1:] != clipped[1:], kind  # same first batch, different updates
        result = read_result(tmp_path / f"{kind}_free")
        assert result["command"].startswith("python ") and result["config"]["trainer"]["grad_clip"] == 0.0


def test_glue_tokenizer_key_and_the_model_files_spelling(tmp_path):
    """`tokenizer=` selects the tokenizer in finetune_glue.py as in train_llama.py; `model.tokenizer=`
    (the model file's key) still works, and the top-level key follows it."""
    assert compose_glue_cfg(*GLUE_TINY, "model.tokenizer=/other/folder").tokenizer == "/other/folder"
    roberta = compose_glue_cfg(*GLUE_TINY).model.tokenizer
    t5 = roberta.replace("roberta-base", "t5-base")  # the T5 folder next to it: other ids, other lengths
    seen = {}
    for name, folder in (("roberta", roberta), ("t5", t5)):
        finetune(tmp_path / name, f"tokenizer={folder}", "trainer.max_steps=1")
        seen[name] = read_metrics(tmp_path / name / "metrics.jsonl")[0]["tokens_seen"]
        assert read_result(tmp_path / name)["config"]["tokenizer"] == folder
    assert seen["roberta"] != seen["t5"]


def test_a_live_run_folder_is_refused(tmp_path, capsys):
    """While another process holds the folder's lock, a resume there exits 2 and writes nothing."""
    out = tmp_path / "run"
    pretrain(out, "trainer.max_steps=2")
    (out / "result.json").unlink()
    before = snapshot(out)
    with lock_run_dir(out):
        assert exit_code(pretrain, out, "trainer.max_steps=2", "resume=true") == 2
        assert "in use by another run" in capsys.readouterr().err
        assert {k: v for k, v in snapshot(out).items() if k.name != ".run.lock"} == before


def test_the_process_group_ends_with_the_run_also_when_it_fails(tmp_path, capsys):
    """distributed=fsdp2 in one process starts its own gloo group; the run ends it on every way out
    (finished, refused after the group started, already finished), so nothing is left to the exit."""
    import torch.distributed as dist

    out = tmp_path / "run"
    fsdp = ["distributed=fsdp2", "trainer.max_steps=2"]
    pretrain(out, *fsdp, "trainer.checkpoint_every=1")
    assert not dist.is_initialized()
    (out / "result.json").unlink()
    with lock_run_dir(out):  # refused after the model was sharded, i.e. after the group started
        assert exit_code(pretrain, out, *fsdp, "resume=true") == 2
    assert "in use by another run" in capsys.readouterr().err and not dist.is_initialized()


def test_config_changes_outside_the_allow_list():
    from gwt_lab.config_checks import config_changes

    old = {"a": 1, "logger": {"mode": "offline"}, "loggerx": 1, "t": {"x": [1, 2], "y": 0}}
    new = {"a": 2, "logger": {"mode": "online", "tags": ["b"]}, "loggerx": 2, "t": {"x": [1, 3], "y": 0}, "n": 5}
    assert config_changes(old, new, ["logger"]) == ["a: 1 -> 2", "loggerx: 1 -> 2", "n: (absent) -> 5",
                                                    "t.x: [1, 2] -> [1, 3]"]
    assert config_changes(old, old, []) == []


def test_finite_check_sees_every_weight_and_state_tensor():
    from gwt_lab.loop import finite_weights_and_state

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2).to(torch.bfloat16))
    optimizer = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert finite_weights_and_state(model, optimizer)
    model[1].bias.data[0] = 3e38  # large but finite: a max-abs check, no overflowing sum of squares
    assert finite_weights_and_state(model, optimizer)
    for bad in (float("nan"), float("inf")):
        optimizer.state[model[0].weight]["exp_avg_sq"][1, 2] = bad
        assert not finite_weights_and_state(model, optimizer)
    optimizer.state[model[0].weight]["exp_avg_sq"][1, 2] = 0.0
    model[1].weight.data[0, 0] = float("-inf")
    assert not finite_weights_and_state(model, optimizer)
