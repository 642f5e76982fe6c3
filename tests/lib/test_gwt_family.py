"""GWT-Adafactor, GWT around other optimizers, parameter groups, the registry, memory accounting."""
import copy

import pytest
import torch
import torch.nn as nn

from tests.helpers import lm_loss
from gwt import GWT, GWTAdafactor, GWTAdamW, build_optimizer, estimate_state_bytes, gwt_param_groups
from gwt import optimizer_state_bytes
from gwt.groups import target_linear_weights
from gwt.optim import OPTIMIZER_NAMES


# ----------------------------------------------------------------------------- GWT-Adafactor
def test_adafactor_level0_equals_transformers_adafactor():
    from transformers.optimization import Adafactor

    torch.manual_seed(0)
    mat, vec = torch.randn(6, 10, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    grads = [(torch.randn(6, 10, dtype=torch.float64), torch.randn(7, dtype=torch.float64)) for _ in range(5)]
    ours = [nn.Parameter(mat.clone()), nn.Parameter(vec.clone())]
    ref = [nn.Parameter(mat.clone()), nn.Parameter(vec.clone())]
    opt = GWTAdafactor(ours, lr=1e-2, level=0)
    opt_ref = Adafactor(ref, lr=1e-2, scale_parameter=False, relative_step=False, warmup_init=False)
    for gm, gv in grads:
        for ps in (ours, ref):
            ps[0].grad, ps[1].grad = gm.clone(), gv.clone()
        opt.step()
        opt_ref.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_gwt_adafactor_states_and_detail_scaling(tiny_llama):
    models = {k: copy.deepcopy(tiny_llama) for k in ("second_moment", "none")}
    losses = {}
    for scaling, model in models.items():
        opt = GWTAdafactor(gwt_param_groups(model, level=2), lr=3e-3, detail_scaling=scaling, beta1=0.9)
        losses[scaling] = []
        for step in range(12):
            opt.zero_grad()
            loss = lm_loss(model, seed=0)
            loss.backward()
            opt.step()
            losses[scaling].append(loss.item())
        q = model.model.layers[0].self_attn.q_proj.weight
        state = opt.state[q]
        assert state["row"].shape == (32,) and state["col"].shape == (8,)  # factored over (32, 32/4)
        assert state["exp_avg"].shape == (32, 8)
        assert losses[scaling][-1] < losses[scaling][0] - 0.1
    assert losses["second_moment"] != losses["none"]


def test_gwt_adafactor_limiter_option_and_errors():
    p = nn.Parameter(torch.randn(4, 16))
    opt = GWTAdafactor([p], lr=1e-2, level=1, limiter=1.01)
    p.grad = torch.randn(4, 16)
    opt.step()
    assert torch.isfinite(opt.state[p]["prev_norm"])
    with pytest.raises(ValueError, match="detail_scaling='x'"):
        GWTAdafactor([p], detail_scaling="x")
    with pytest.raises(ValueError, match="clip_threshold=0"):
        GWTAdafactor([p], clip_threshold=0)


# ----------------------------------------------------------------------------- GWT around any optimizer
class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp_in = nn.Linear(16, 64)
        self.mlp_out = nn.Linear(64, 4)

    def forward(self, x):
        return self.mlp_out(torch.tanh(self.mlp_in(x)))


def regression_run(inner_cls, steps=60, **kw):
    torch.manual_seed(0)
    model = TwoLayer()
    x = torch.randn(128, 16)
    y = torch.sin(x[:, :4] * 2)
    opt = GWT(gwt_param_groups(model, target_modules=["mlp"], level=2), inner_cls, **kw)
    first = last = None
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    return model, opt, first, last


@pytest.mark.parametrize("inner,kw,state_key", [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9), "momentum_buffer"),
    (torch.optim.AdamW, dict(lr=1e-2), "exp_avg"),
])
def test_wrapper_trains_with_compressed_states(inner, kw, state_key):
    model, opt, first, last = regression_run(inner, **kw)
    assert last < 0.7 * first, (first, last)
    # Inner states of the targeted matrices have the approximation's size: (out, in / 4).
    for module in (model.mlp_in, model.mlp_out):
        stand_in = opt.stand_ins[module.weight]
        assert opt.inner.state[stand_in][state_key].shape == (module.out_features, module.in_features // 4)
    # Biases are not wrapped: the inner optimizer holds full-size state for them.
    assert opt.inner.state[model.mlp_in.bias][state_key].shape == (64,)


def test_wrapper_sgd_detail_pass_through_matches_hand_computation():
    """One plain-SGD step: W - lr * alpha * G exactly (Haar is orthonormal: A and D recombine)."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, 8, dtype=torch.float64))
    g = torch.randn(3, 8, dtype=torch.float64)
    opt = GWT([w], torch.optim.SGD, lr=0.1, level=2, alpha=1.0)
    expected = w.detach() - 0.1 * g
    w.grad = g
    opt.step()
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-14)


def test_wrapper_adamw8bit_runs_with_small_states():
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is part of the [baselines] extra")
    # min_8bit_size: bitsandbytes keeps small tensors (< 4096 entries by default) in fp32.
    model, opt, first, last = regression_run(bnb.optim.AdamW8bit, lr=1e-2, steps=40, min_8bit_size=16)
    assert last < first
    stand_in = opt.stand_ins[model.mlp_in.weight]
    assert opt.inner.state[stand_in]["state1"].dtype == torch.uint8
    assert opt.inner.state[stand_in]["state1"].shape == (64, 4)


def test_wrapper_state_dict_round_trip(tmp_path):
    model, opt, _, _ = regression_run(torch.optim.SGD, steps=3, lr=0.1, momentum=0.9)
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    model2 = copy.deepcopy(model)
    opt2 = GWT(gwt_param_groups(model2, target_modules=["mlp"], level=2), torch.optim.SGD, lr=0.1, momentum=0.9)
    opt2.load_state_dict(torch.load(tmp_path / "o.pt", weights_only=True))
    x = torch.randn(8, 16)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- parameter groups
def test_param_groups_cover_llama_exactly_once(tiny_llama):
    groups = gwt_param_groups(tiny_llama, level=2)
    names = [n for g in groups for n, _ in g["params"]]
    assert sorted(names) == sorted(n for n, _ in tiny_llama.named_parameters())
    gwt_names = {n for n, _ in groups[0]["params"]}
    assert len(gwt_names) == 2 * 7  # q k v o gate up down per layer
    assert all(("self_attn" in n or "mlp" in n) and n.endswith("weight") for n in gwt_names)
    assert groups[1]["level"] == 0


def test_param_groups_roberta_presets():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    model = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40))
    released = target_linear_weights(model, "roberta")
    assert len(released) == 2 * 6  # query key value attention.output.dense intermediate.dense output.dense
    encoder = target_linear_weights(model, "encoder_linear")
    assert set(encoder) == set(released)
    everything = target_linear_weights(model, "all_linear")
    assert set(everything) - set(encoder) == {"classifier.dense.weight", "classifier.out_proj.weight"}
    model.roberta.embeddings.word_embeddings.weight.requires_grad_(False)
    groups = gwt_param_groups(model, "encoder_linear", level=2)
    covered = [n for g in groups for n, _ in g["params"]]
    assert "roberta.embeddings.word_embeddings.weight" not in covered
    assert len(covered) == len(set(covered)) == sum(p.requires_grad for p in model.parameters())


def test_param_groups_errors(tiny_llama):
    with pytest.raises(ValueError, match="matched no trainable nn.Linear"):
        gwt_param_groups(tiny_llama, target_modules=["nothing_here"])
    with pytest.raises(ValueError, match="target_modules='bert'"):
        gwt_param_groups(tiny_llama, target_modules="bert")


def test_tied_embeddings_counted_once():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24,
                                         num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=True))
    groups = gwt_param_groups(model)
    ids = [id(p) for g in groups for _, p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


# ----------------------------------------------------------------------------- registry
REGISTRY_CASES = {
    "adamw": {},
    "gwt": dict(wavelet="haar", level=2),
    "gwt_adafactor": dict(level=2),
    "adafactor": {},
    "galore": dict(rank=0.25, update_proj_gap=2),
    "apollo": dict(rank=0.25, update_proj_gap=2),
    "fira": dict(rank=0.25, update_proj_gap=2),
    "gwt_wrap": dict(inner="sgd", inner_kwargs={"momentum": 0.9}),
    "apollo_mini": dict(update_proj_gap=2),
    "adam_mini": {},
    "muon": {},
    "adamw8bit": {},
}


def test_registry_covers_every_name():
    assert set(REGISTRY_CASES) == set(OPTIMIZER_NAMES)


@pytest.mark.parametrize("name", list(REGISTRY_CASES))
def test_registry_builds_and_steps(name, tiny_llama):
    model = copy.deepcopy(tiny_llama)
    opt = build_optimizer(model, name, lr=1e-3, **REGISTRY_CASES[name])
    before = [p.detach().clone() for p in model.parameters()]
    for seed in range(3):
        opt.zero_grad()
        lm_loss(model, seed).backward()
        opt.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert all(moved), f"{name}: {moved.count(False)} parameters did not move"
    assert optimizer_state_bytes(opt) > 0


def test_registry_targets_the_same_matrices(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    q = model.model.layers[0].self_attn.q_proj.weight
    emb = model.model.embed_tokens.weight
    galore = build_optimizer(model, "galore", lr=1e-3, rank=4)
    rank_group = next(g for g in galore.param_groups if "rank" in g)
    assert any(p is q for p in rank_group["params"]) and not any(p is emb for p in rank_group["params"])
    gwt_opt = build_optimizer(model, "gwt", lr=1e-3)
    assert any(p is q for p in gwt_opt.param_groups[0]["params"])
    assert gwt_opt.param_groups[1]["level"] == 0 and any(p is emb for p in gwt_opt.param_groups[1]["params"])


def test_registry_errors(tiny_llama):
    with pytest.raises(ValueError, match=r"optimizer.name='sgdx' is unknown; valid: adamw, gwt"):
        build_optimizer(tiny_llama, "sgdx", lr=1e-3)
    with pytest.raises(ValueError, match="optimizer.rank is not an option of optimizer 'gwt'"):
        build_optimizer(tiny_llama, "gwt", lr=1e-3, rank=4)
    with pytest.raises(ValueError, match="too deep"):
        build_optimizer(tiny_llama, "gwt", lr=1e-3, level=6)  # hidden 32: level 6 cannot shrink
    with pytest.raises(ValueError, match="optimizer.lr is required"):
        build_optimizer(tiny_llama, "adamw")
    with pytest.raises(ValueError, match="inner='adam9'"):
        build_optimizer(tiny_llama, "gwt_wrap", lr=1e-3, inner="adam9")


# ----------------------------------------------------------------------------- memory
@pytest.mark.parametrize("name,kw", [
    ("adamw", {}),
    ("gwt", dict(wavelet="haar", level=2)),
    ("gwt", dict(wavelet="haar", level=3, limiter=None)),
    ("gwt", dict(wavelet="db2", level=2)),
])
def test_measured_state_bytes_equal_estimate(name, kw, tiny_llama):
    model = copy.deepcopy(tiny_llama)
    opt = build_optimizer(model, name, lr=1e-3, **kw)
    lm_loss(model).backward()
    opt.step()
    targets = list(target_linear_weights(model, "llama"))
    estimate = estimate_state_bytes(model, name, targets=targets,
                                    **{k: v for k, v in kw.items() if k in ("wavelet", "level", "limiter", "rank")})
    assert optimizer_state_bytes(opt) == estimate


def test_galore_projector_keeps_its_full_svd_factor(tiny_llama):
    """galore-torch slices U or V^T of the SVD (``V[:r]``), a view that keeps the whole
    min(m, n)^2 factor alive: measured bytes exceed the nominal r * min(m, n) projector by
    exactly that much for every targeted matrix."""
    model = copy.deepcopy(tiny_llama)
    opt = build_optimizer(model, "galore", lr=1e-3, rank=8)
    lm_loss(model).backward()
    opt.step()
    targets = target_linear_weights(model, "llama")
    nominal = estimate_state_bytes(model, "galore", targets=list(targets), rank=8)
    held = sum((min(p.shape) ** 2 - 8 * min(p.shape)) * 4 for p in targets.values())
    assert optimizer_state_bytes(opt) == nominal + held


def test_gwt_state_is_a_quarter_of_adam_on_targets(tiny_llama):
    shapes = {n: tuple(p.shape) for n, p in target_linear_weights(tiny_llama, "llama").items()}
    adam = estimate_state_bytes(shapes, "adamw")
    gwt2 = estimate_state_bytes(shapes, "gwt", level=2, limiter=None)
    numel = sum(a * (-(-b // 4)) for a, b in shapes.values())
    assert gwt2 == 2 * 4 * numel + 4 * len(shapes)
    assert gwt2 < 0.3 * adam
