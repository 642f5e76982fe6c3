"""scripts/estimate_memory.py: the analytic formula against the state bytes real optimizers hold."""
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import estimate_memory as em  # noqa: E402
from gwt.memory import optimizer_state_bytes  # noqa: E402
from gwt.optim import build_optimizer  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=176, num_attention_heads=4, num_hidden_layers=2, vocab_size=256)


def _stepped_optimizer(name: str, **options):
    """A tiny LLaMA and `name` after one real step (optimizers create their state lazily)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    if name != "adamw":
        options["target_modules"] = "llama"
    optimizer = build_optimizer(model, name=name, lr=1e-3, **options)
    ids = torch.randint(0, TINY["vocab_size"], (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("method, name, options", [
    ("Full-Rank", "adamw", {}),
    ("Haar-2", "gwt", {"wavelet": "haar", "level": 2}),
    ("Haar-3", "gwt", {"wavelet": "haar", "level": 3}),
    ("DB2-2", "gwt", {"wavelet": "db2", "level": 2}),
])
def test_estimate_equals_measured_state_bytes(method, name, options):
    model, optimizer = _stepped_optimizer(name, **options)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    weights, states = em.estimate(shapes, method, state_bytes=4, weight_bytes=4, hidden_size=TINY["hidden_size"])
    assert states == optimizer_state_bytes(optimizer)
    assert weights == 4 * sum(p.numel() for p in model.parameters())


def test_galore_estimate_is_the_ideal_layout():
    """galore-torch keeps its projector as a slice of the full SVD factor, so it holds more than the
    ideal r x min(m, n) projector: at most one extra min(m, n)**2 matrix per target."""
    model, optimizer = _stepped_optimizer("galore", rank=TINY["hidden_size"] // 4)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    _, states = em.estimate(shapes, "GaLore-1/4", state_bytes=4, hidden_size=TINY["hidden_size"])
    full_svd = sum(4 * min(shapes[n]) ** 2 for n in em.llama_targets(shapes))
    measured = optimizer_state_bytes(optimizer)
    assert states < measured <= states + full_svd


def test_llama_60m_shapes_and_paper_scale():
    shapes = em.llama_shapes(em.llama_dims("llama_60m"))
    params = sum(torch.Size(s).numel() for s in shapes.values())
    assert 57e6 < params < 60e6  # "60M" with untied 32000-token embeddings and lm_head
    assert len(em.llama_targets(shapes)) == 8 * 7  # q, k, v, o, gate, up, down per layer
    est = em.Estimator()
    weights, states = est.gb("llama_60m", "Full-Rank")
    assert weights == pytest.approx(0.12, abs=0.01) and states == pytest.approx(0.23, abs=0.01)  # paper A4
    haar = [est.gb("llama_130m", f"Haar-{level}")[1] for level in range(1, 6)]
    assert haar == sorted(haar, reverse=True)  # deeper levels, fewer states (Table 4)


def test_unknown_method_and_model_are_named():
    with pytest.raises(ValueError, match="LoRA"):
        em.estimate({"w": (4, 4)}, "LoRA")
    with pytest.raises(ValueError, match="llama_3m"):
        em.llama_dims("llama_3m")


def test_cli_prints_tables_beside_paper(capsys):
    assert em.main(["--unit", "GiB"]) == 0
    out = capsys.readouterr().out
    assert "Table A4" in out and "Table 4 (memory columns)" in out
    assert "(0.23G)" in out  # paper's Full-Rank 60M states printed beside ours


def test_qwen_estimate_equals_measured_state_bytes():
    """Qwen2.5 (GQA, q/k/v biases, tied embedding): the estimate from the YAML's shapes equals what a
    stepped GWT optimizer holds (biases and the tied embedding: full Adam moments, counted once)."""
    from gwt_lab.models import build_causal_lm

    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "model" / "qwen2_5_tiny.yaml").read_text())
    cfg["vocab_size"] = 256
    model = build_causal_lm(cfg, seed=0)
    optimizer = build_optimizer(model, name="gwt", lr=1e-3, target_modules="llama", wavelet="haar", level=2)
    ids = torch.randint(0, 256, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert "lm_head.weight" not in shapes and "model.layers.0.self_attn.q_proj.bias" in shapes
    assert "model.layers.0.self_attn.q_proj.bias" not in em.llama_targets(shapes)
    _, states = em.estimate(shapes, "Haar-2", state_bytes=4, weight_bytes=4)
    assert states == optimizer_state_bytes(optimizer)


def test_qwen_configs_in_the_tables(capsys):
    shapes, hidden = em.model_shapes("qwen2_5_0_5b")
    assert hidden == 896 and sum(torch.Size(s).numel() for s in shapes.values()) == 494_032_768
    est = em.Estimator()
    full = est.gb("qwen2_5_0_5b", "Full-Rank")[1]
    haar = est.gb("qwen2_5_0_5b", "Haar-2")[1]
    assert full == pytest.approx(2 * 2 * 494_032_768 / 1e9, rel=0.01) and haar < full
    assert em.main(["--models", "qwen2_5_tiny,qwen2_5_60m"]) == 0
    out = capsys.readouterr().out
    assert "qwen2_5_60m weights / states" in out and "Haar-2" in out
    with pytest.raises(SystemExit):
        em.main(["--models", "qwen9"])
