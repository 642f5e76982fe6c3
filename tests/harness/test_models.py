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


# ------------------------------------------------------------------------- Qwen2.5 (qwen2_5_*.yaml)
QWEN_SIZES = ["qwen2_5_tiny", "qwen2_5_60m", "qwen2_5_130m", "qwen2_5_350m", "qwen2_5_0_5b", "qwen2_5_1b"]


@pytest.mark.parametrize("name", QWEN_SIZES)
def test_qwen_yaml_builds_a_qwen2_with_gqa_and_qkv_bias(name):
    from gwt_lab.models import QWEN2_ARCH_KEYS, build_causal_lm

    cfg = _yaml(name)
    assert cfg["name"] == name and cfg["architecture"] == "qwen2" and set(QWEN2_ARCH_KEYS) <= set(cfg)
    assert cfg["vocab_size"] == 151936 and cfg["tie_word_embeddings"] is True and cfg["tokenizer"]
    with torch.device("meta"):  # shapes only
        model = build_causal_lm(cfg)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    attn = model.model.layers[0].self_attn
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    assert attn.k_proj.weight.shape == (cfg["num_key_value_heads"] * head_dim, cfg["hidden_size"])
    assert attn.q_proj.bias is not None and attn.v_proj.bias is not None and attn.o_proj.bias is None
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.rope_parameters["rope_theta"] == 1e6


def test_qwen_0_5b_is_the_released_size():
    from gwt_lab.models import build_causal_lm

    with torch.device("meta"):
        n = count_parameters(build_causal_lm(_yaml("qwen2_5_0_5b")))
    assert n["total"] == 494_032_768 and n["embedding"] == 151936 * 896  # Qwen2.5-0.5B: 0.49B, tied


def test_qwen_targets_for_gwt_are_the_matrices_and_biases_are_plain():
    from gwt import gwt_param_groups
    from gwt_lab.models import build_causal_lm

    model = build_causal_lm(dict(_yaml("qwen2_5_tiny"), vocab_size=256), seed=0)
    gwt_group, plain = gwt_param_groups(model, "llama", level=2)
    gwt_names = {n for n, _ in gwt_group["params"]}
    assert {n.split(".")[-2] for n in gwt_names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"}
    assert all(n.endswith(".weight") for n in gwt_names)
    plain_names = {n for n, _ in plain["params"]}
    assert plain["level"] == 0 and "model.layers.0.self_attn.q_proj.bias" in plain_names
    assert "model.embed_tokens.weight" in plain_names and "lm_head.weight" not in plain_names  # tied: counted once


def test_build_causal_lm_dispatch_and_errors():
    from gwt_lab.models import build_causal_lm

    llama = build_causal_lm(dict(_yaml("llama_tiny"), vocab_size=128), seed=3)
    assert type(llama).__name__ == "LlamaForCausalLM"
    again = build_llama(**{k: dict(_yaml("llama_tiny"), vocab_size=128)[k] for k in LLAMA_ARCH_KEYS}, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(llama.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match=r"model.architecture='gpt2' is unknown; choose one of \['llama', 'qwen2'\]"):
        build_causal_lm(dict(_yaml("llama_tiny"), architecture="gpt2"))
    bad = {k: v for k, v in _yaml("qwen2_5_tiny").items() if k != "num_key_value_heads"}
    with pytest.raises(ValueError, match="lacks model.num_key_value_heads"):
        build_causal_lm(bad)
    with pytest.raises(ValueError, match="num_key_value_heads=3"):
        build_causal_lm(dict(_yaml("qwen2_5_tiny"), num_key_value_heads=3))
