"""The 2026 baselines of the registry (APOLLO-Mini, Adam-mini, Muon, 8-bit AdamW): each builds from its
YAML in configs/optimizer, steps a tiny LLaMA, and continues identically after a checkpoint round trip
(state_dict -> torch.save -> torch.load(weights_only=True) -> load_state_dict)."""
import copy
import functools

import pytest
import torch

from gwt.memory import optimizer_state_bytes
from gwt.optim import build_optimizer
from gwt.optim.registry import MuonAdamW
from tests.helpers import compose_cfg, lm_loss

pytest.importorskip("apollo_torch")
pytest.importorskip("adam_mini")


@functools.cache
def _preset(name: str) -> dict:
    """configs/optimizer/<name>.yaml as composed by Hydra (presets may inherit from others)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_cfg([f"optimizer={name}"], base=[]).optimizer, resolve=True)


def yaml_options(name: str, **overrides) -> dict:
    return {**_preset(name), **overrides}


def train_steps(model, optimizer, steps: int, seed: int = 0):
    for i in range(steps):
        lm_loss(model, seed=seed + i).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def roundtrip(state, tmp_path):
    """The harness's checkpoint path: projector objects as plain data, weights_only load."""
    from gwt_lab.train.safe_state import from_plain, to_plain

    torch.save(to_plain(state), tmp_path / "opt.pt")
    return from_plain(torch.load(tmp_path / "opt.pt", weights_only=True))


CASES = [
    ("apollo_mini", {}),
    ("adam_mini", {}),
    ("muon", {}),
    ("adamw8bit", {"impl": "torchao"}),
    ("adamw8bit", {"impl": "bitsandbytes"}),
]


@pytest.mark.parametrize("name,extra", CASES, ids=[f"{n}-{e.get('impl', '')}".rstrip("-") for n, e in CASES])
def test_baseline_builds_steps_and_resumes_identically(tiny_llama, tmp_path, name, extra):
    if extra.get("impl") == "torchao":
        pytest.importorskip("torchao.optim")
    if extra.get("impl") == "bitsandbytes":
        pytest.importorskip("bitsandbytes")
    options = yaml_options(name, lr=1e-2, **extra)
    model = tiny_llama
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, **options)
    train_steps(model, opt, 3)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before), f"parameters not updated: {sorted(set(before) - set(changed))}"
    assert optimizer_state_bytes(opt) > 0

    twin = copy.deepcopy(model)
    twin_opt = build_optimizer(twin, **options)
    twin_opt.load_state_dict(roundtrip(opt.state_dict(), tmp_path))
    train_steps(model, opt, 2, seed=10)
    train_steps(twin, twin_opt, 2, seed=10)
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), f"{name}: {n} differs after resuming from the checkpoint"


def test_states_are_plain_tensors_for_weights_only(tiny_llama, tmp_path):
    """Muon and Adam-mini states load with weights_only=True as they are (no object conversion)."""
    for name in ("muon", "adam_mini"):
        model = copy.deepcopy(tiny_llama)
        opt = build_optimizer(model, **yaml_options(name))
        train_steps(model, opt, 1)
        torch.save(opt.state_dict(), tmp_path / f"{name}.pt")
        loaded = torch.load(tmp_path / f"{name}.pt", weights_only=True)  # raises on any non-plain object
        twin = build_optimizer(copy.deepcopy(model), **yaml_options(name))
        twin.load_state_dict(loaded)
        assert optimizer_state_bytes(twin) == optimizer_state_bytes(opt)


def test_muon_splits_matrices_and_one_scheduler_drives_both(tiny_llama):
    opt = build_optimizer(tiny_llama, **yaml_options("muon", lr=0.02))
    assert isinstance(opt, MuonAdamW)
    muon_params = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    adamw_params = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    names = {id(p): n for n, p in tiny_llama.named_parameters()}
    assert all(("self_attn" in names[i] or "mlp" in names[i]) for i in muon_params)
    assert {names[i] for i in adamw_params} >= {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}
    assert muon_params | adamw_params == set(names) and not muon_params & adamw_params

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    train_steps(tiny_llama, opt, 1)
    sched.step()
    assert [g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups] == pytest.approx([0.01, 0.01])
    # state bytes: Muon's momentum buffers + AdamW's two moments (+ step counters)
    matrix_numel = sum(tiny_llama.get_parameter(names[i]).numel() for i in muon_params)
    other_numel = sum(tiny_llama.get_parameter(names[i]).numel() for i in adamw_params)
    assert optimizer_state_bytes(opt) >= 4 * (matrix_numel + 2 * other_numel)
    assert optimizer_state_bytes(opt) < 4 * (matrix_numel + 2 * other_numel) + 4096


def test_muon_rejects_a_foreign_state_dict(tiny_llama):
    opt = build_optimizer(tiny_llama, **yaml_options("muon"))
    with pytest.raises(ValueError, match="not a MuonAdamW state dict"):
        opt.load_state_dict(torch.optim.AdamW(tiny_llama.parameters()).state_dict())


def test_adam_mini_keeps_one_second_moment_per_head_and_neuron(tiny_llama):
    opt = build_optimizer(tiny_llama, **yaml_options("adam_mini"))
    train_steps(tiny_llama, opt, 1)
    q = tiny_llama.model.layers[0].self_attn.q_proj.weight
    down = tiny_llama.model.layers[0].mlp.down_proj.weight
    assert opt.state[q]["vmean"].numel() == tiny_llama.config.num_attention_heads
    assert opt.state[down]["vmean"].numel() == down.shape[0]
    # far below AdamW: m full size, v tiny
    adamw_bytes = 8 * sum(p.numel() for p in tiny_llama.parameters())
    assert optimizer_state_bytes(opt) < 0.6 * adamw_bytes


def test_adam_mini_needs_head_count_without_a_config():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="optimizer.dim is required"):
        build_optimizer(model, **yaml_options("adam_mini"))


def test_apollo_mini_is_rank_one_with_tensor_scaling(tiny_llama):
    opt = build_optimizer(tiny_llama, **yaml_options("apollo_mini"))
    target = opt.param_groups[0]
    assert target["rank"] == 1 and target["scale_type"] == "tensor" and opt.scale_front
    train_steps(tiny_llama, opt, 1)
    q = tiny_llama.model.layers[0].self_attn.q_proj.weight
    assert min(opt.state[q]["exp_avg"].shape) == 1


def test_adamw8bit_unknown_impl_is_one_clear_error(tiny_llama):
    with pytest.raises(ValueError, match=r"optimizer.impl='apex' is unknown; valid: torchao, bitsandbytes"):
        build_optimizer(tiny_llama, **yaml_options("adamw8bit", impl="apex"))
