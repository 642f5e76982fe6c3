"""LLaMA model configs and construction (gwt_lab.models + configs/model/llama_*.yaml)."""
import pytest
import torch
import yaml

from gwt_lab.models import LLAMA_ARCH_KEYS, build_llama, count_parameters, llama_config
from tests.helpers import CONFIGS

SIZES = ["llama_tiny", "llama_20m", "llama_60m", "llama_130m", "llama_350m", "llama_1b", "llama_7b"]
# Released architectures (GaLore / GWT config files); 1B: 32 heads, 24 layers (see shared/paper/README.md).
ARCH = {"llama_60m": (512, 1376, 8, 8), "llama_130m": (768, 2048, 12, 12), "llama_350m": (1024, 2736, 16, 24),
        "llama_1b": (2048, 5461, 32, 24), "llama_7b": (4096, 11008, 32, 32)}
STEPS = {"llama_60m": 10000, "llama_130m": 20000, "llama_350m": 60000, "llama_1b": 100000}


def _yaml(name):
    return yaml.safe_load((CONFIGS / "model" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", SIZES)
def test_model_yaml_keys(name):
    cfg = _yaml(name)
    assert cfg["name"] == name and cfg["vocab_size"] == 32000 and cfg["initializer_range"] == 0.02
    assert set(LLAMA_ARCH_KEYS) <= set(cfg) and cfg["max_position_embeddings"] >= 256
    if name in ARCH:
        assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
                cfg["num_hidden_layers"]) == ARCH[name]
    if name in STEPS:
        assert cfg["paper_steps"] == STEPS[name]


@pytest.mark.parametrize("name, low, high", [("llama_20m", 19e6, 22e6), ("llama_60m", 55e6, 60e6),
                                             ("llama_130m", 125e6, 136e6), ("llama_350m", 360e6, 372e6),
                                             ("llama_1b", 1.30e9, 1.36e9), ("llama_7b", 6.6e9, 6.8e9)])
def test_parameter_counts_match_names(name, low, high):
    cfg = _yaml(name)
    n_layer = cfg["hidden_size"] ** 2 * 4 + 3 * cfg["hidden_size"] * cfg["intermediate_size"] + 2 * cfg["hidden_size"]
    total = cfg["num_hidden_layers"] * n_layer + 2 * cfg["vocab_size"] * cfg["hidden_size"] + cfg["hidden_size"]
    assert low <= total <= high
    if name == "llama_60m":  # the analytic count equals the built model's
        assert count_parameters(build_llama(**{k: cfg[k] for k in LLAMA_ARCH_KEYS}))["total"] == total


def test_build_llama_init_and_attention():
    cfg = _yaml("llama_tiny")
    model = build_llama(**{k: cfg[k] for k in LLAMA_ARCH_KEYS}, seed=1)
    again = build_llama(**{k: cfg[k] for k in LLAMA_ARCH_KEYS}, seed=1)
    assert model.config._attn_implementation == "sdpa" and not model.config.tie_word_embeddings
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    for weight in (model.lm_head.weight, model.model.embed_tokens.weight, model.model.layers[0].mlp.up_proj.weight):
        assert abs(weight.std().item() - 0.02) < 0.002 and abs(weight.mean().item()) < 0.002
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))


def test_llama_config_rejects_bad_heads():
    with pytest.raises(ValueError, match="num_attention_heads"):
        llama_config(hidden_size=100, intermediate_size=64, num_attention_heads=3, num_hidden_layers=1)
