"""gwt.integrations.hf: GWT inside a real transformers.Trainer (tiny models, CPU)."""
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from gwt import GWTAdamW  # noqa: E402
from gwt.integrations.hf import optimizer_cls_and_kwargs, param_groups, target_weight_names  # noqa: E402

VOCAB, SEQ = 48, 16


def tiny_causal_lm():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=None)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def tiny_classifier():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, max_position_embeddings=64, num_labels=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def lm_data(n=32):
    """Sequences that count upwards from a random start (mod VOCAB): easy to learn."""
    gen = torch.Generator().manual_seed(1)
    starts = torch.randint(0, VOCAB, (n, 1), generator=gen)
    ids = (starts + torch.arange(SEQ)) % VOCAB
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def cls_data(n=32):
    """Label 1 when the first token is in the upper half of the vocabulary."""
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] >= VOCAB // 2).long().tolist()})


def make_trainer(model, data, out, max_steps, save_steps=0, **gwt):
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8, logging_steps=1,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, report_to="none",
        use_cpu=True, seed=0, data_seed=0, lr_scheduler_type="constant", dataloader_num_workers=0,
        disable_tqdm=True)
    pair = optimizer_cls_and_kwargs(**{"lr": 1e-2, "wavelet": "haar", "level": 2, **gwt})
    return transformers.Trainer(model=model, args=args, train_dataset=data, optimizer_cls_and_kwargs=pair)


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def unwrap(optimizer):
    """The GWT optimizer inside the Trainer's (Accelerate) wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def check_states(model, optimizer, targets, level=2):
    """Targets: moments of 1/2**level of the matrix; everything else: plain Adam moments."""
    optimizer = unwrap(optimizer)
    assert isinstance(optimizer, GWTAdamW)
    name_of = {id(p): n for n, p in model.named_parameters()}
    seen = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            name = name_of[id(p)]
            if name in targets:
                assert group["level"] == level and p.dim() == 2
                assert state["exp_avg"].shape == (p.shape[0], p.shape[1] // 2 ** level), name
                assert state["exp_avg_sq"].numel() * 2 ** level == p.numel(), name
            else:
                assert group["level"] == 0
                assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape, name
            seen += 1
    assert seen == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("build,data", [(tiny_causal_lm, lm_data), (tiny_classifier, cls_data)],
                         ids=["causal_lm", "classifier"])
def test_trainer_learns_with_gwt(tmp_path, build, data):
    model = build()
    trainer = make_trainer(model, data(), tmp_path, max_steps=16)
    trainer.train()
    loss = losses(trainer)
    assert len(loss) == 16
    assert sum(loss[-3:]) / 3 < 0.8 * sum(loss[:3]) / 3, loss
    targets = set(target_weight_names(model, "all-linear"))
    assert targets and all(n.endswith(".weight") for n in targets)
    check_states(model, trainer.optimizer, targets)


def test_all_linear_skips_output_layer_and_norms_get_no_decay():
    model = tiny_causal_lm()
    targets = target_weight_names(model, "all-linear")
    assert "lm_head.weight" not in targets
    assert {n.split(".")[-2] for n in targets} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"}
    groups = param_groups(model, "all-linear")
    no_decay = [n for n, _ in groups[-1]["params"]]
    assert groups[-1]["weight_decay"] == 0.0 and no_decay and all("norm" in n for n in no_decay)
    opt = optimizer_cls_and_kwargs(lr=1e-3, weight_decay=0.1)[0]()(model, **optimizer_cls_and_kwargs(
        lr=1e-3, weight_decay=0.1)[1])
    decays = {n: g["weight_decay"] for g in opt.param_groups for n in g["param_names"]}
    assert decays["lm_head.weight"] == 0.1 and decays["model.layers.0.self_attn.q_proj.weight"] == 0.1
    assert decays["model.norm.weight"] == 0.0


def test_classifier_biases_get_plain_adam_without_decay():
    model = tiny_classifier()
    factory, kwargs = optimizer_cls_and_kwargs(lr=1e-3, weight_decay=0.01)
    opt = factory()(model, **kwargs)
    by_name = {n: g for g in opt.param_groups for n in g["param_names"]}
    bias = "bert.encoder.layer.0.attention.self.query.bias"
    assert by_name[bias]["level"] == 0 and by_name[bias]["weight_decay"] == 0.0
    assert by_name["bert.encoder.layer.0.attention.self.query.weight"]["level"] == 2
    assert by_name["bert.embeddings.LayerNorm.weight"]["weight_decay"] == 0.0


@pytest.mark.parametrize("target,expected", [
    (["q_proj", "v_proj"], {"q_proj", "v_proj"}),                 # list of names (substrings)
    (r".*\.mlp\.(up|down)_proj", {"up_proj", "down_proj"}),       # regex, matched in full
    ("llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),  # preset
    ([r"model\.layers\.1\.self_attn\.o_proj"], {"o_proj"}),       # list entry as a regex
])
def test_target_module_forms(target, expected):
    names = target_weight_names(tiny_causal_lm(), target)
    assert {n.split(".")[-2] for n in names} == expected
    if target == [r"model\.layers\.1\.self_attn\.o_proj"]:
        assert names == ["model.layers.1.self_attn.o_proj.weight"]


@pytest.mark.parametrize("bad,match", [
    ("(", "neither 'all-linear', a preset"),
    ([], "must be 'all-linear'"),
    (3, "must be 'all-linear'"),
])
def test_bad_target_modules_fail_before_training(bad, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        optimizer_cls_and_kwargs(target_modules=bad)


def test_unknown_optimizer_and_unmatched_targets():
    with pytest.raises(ValueError, match=r"optimizer='sgd' is unknown; choose one of \['adamw', 'adafactor'\]"):
        optimizer_cls_and_kwargs(optimizer="sgd")
    with pytest.raises(ValueError, match="matched no trainable nn.Linear"):
        target_weight_names(tiny_causal_lm(), ["no_such_module"])


def test_resume_from_checkpoint_continues_same_state(tmp_path):
    full = make_trainer(tiny_causal_lm(), lm_data(), tmp_path / "full", max_steps=8)
    full.train()
    first = make_trainer(tiny_causal_lm(), lm_data(), tmp_path / "split", max_steps=8, save_steps=4)
    first.train()  # writes checkpoint-4 and checkpoint-8
    ckpt = tmp_path / "split" / "checkpoint-4"
    assert (ckpt / "optimizer.pt").is_file()
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)
    levels = {g["level"] for g in saved["param_groups"]}
    assert levels == {0, 2}
    resumed = make_trainer(tiny_causal_lm(), lm_data(), tmp_path / "resumed", max_steps=8)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 8
    # The losses after the checkpoint and the final optimizer state equal the uninterrupted run's.
    # (the resumed log history starts with the checkpoint's first 4 entries)
    assert len(losses(resumed)) == 8
    assert losses(resumed)[4:] == pytest.approx(losses(full)[4:], rel=1e-5)
    name_of = {id(p): n for n, p in full.model.named_parameters()}
    full_states = {name_of[id(p)]: s for p, s in unwrap(full.optimizer).state.items()}
    name_of = {id(p): n for n, p in resumed.model.named_parameters()}
    resumed_states = {name_of[id(p)]: s for p, s in unwrap(resumed.optimizer).state.items()}
    assert full_states.keys() == resumed_states.keys()
    for name, state in full_states.items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(resumed_states[name][key], state[key], rtol=1e-5, atol=1e-7)
        assert float(resumed_states[name]["step"]) == 8
    for (n, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_adafactor_variant_builds_and_learns(tmp_path):
    from gwt import GWTAdafactor

    model = tiny_causal_lm()
    trainer = make_trainer(model, lm_data(), tmp_path, max_steps=12, optimizer="adafactor", lr=1e-2)
    trainer.train()
    assert isinstance(unwrap(trainer.optimizer), GWTAdafactor)
    loss = losses(trainer)
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, loss
