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


# ----------------------------------------------------------------------------- --fit: DDP vs FSDP2
FIT_ARGS = dict(gpus=8, micro_batch=4, seq_len=64, checkpointing=False)


def _fit(model: str, method: str, strategy: str, **kw):
    shapes, _ = em.model_shapes(model)
    return em.fit_bytes(shapes, em.model_dims(model), method, strategy, **{**FIT_ARGS, **kw})


@pytest.mark.parametrize("model", ["llama_60m", "qwen2_5_60m"])
@pytest.mark.parametrize("method, name, options", [
    ("Full-Rank", "adamw", {}),
    ("Haar-2", "gwt", {"wavelet": "haar", "level": 2}),
])
@pytest.mark.parametrize("gpus", [2, 3, 8])
def test_fsdp2_states_are_the_largest_shard(model, method, name, options, gpus):
    """The per-GPU optimizer-state column under FSDP2 is estimate_state_bytes' shard 0 (the largest);
    under DDP every GPU holds the whole model's states."""
    from gwt.memory import estimate_state_bytes

    shapes, _ = em.model_shapes(model)
    targets = em.llama_targets(shapes)
    fsdp2 = _fit(model, method, "fsdp2", gpus=gpus)
    shards = [estimate_state_bytes(shapes, name, targets=targets, world_size=gpus, shard=k, **options)
              for k in range(gpus)]
    assert fsdp2["states"] == shards[0] == max(shards)
    ddp = _fit(model, method, "ddp", gpus=gpus)
    assert ddp["states"] == estimate_state_bytes(shapes, name, targets=targets, **options)
    assert ddp["states"] / gpus <= fsdp2["states"] < ddp["states"]


@pytest.mark.parametrize("gpus", [2, 4, 8])
def test_fsdp2_weights_and_grads_are_about_one_nth(gpus):
    ddp = _fit("llama_1b", "Haar-2", "ddp", gpus=gpus)
    fsdp2 = _fit("llama_1b", "Haar-2", "fsdp2", gpus=gpus)
    shapes, _ = em.model_shapes("llama_1b")
    params = sum(torch.Size(s).numel() for s in shapes.values())
    assert ddp["weights"] == 4 * params and ddp["grads"] == 2 * 4 * params  # + DDP's all-reduce buckets
    assert fsdp2["weights"] == fsdp2["grads"]
    assert fsdp2["weights"] == pytest.approx(ddp["weights"] / gpus, rel=0.01)
    assert fsdp2["total"] < ddp["total"]
    # one process: no DDP buckets; FSDP2 on one GPU holds everything
    one = _fit("llama_1b", "Haar-2", "fsdp2", gpus=1)
    assert one["weights"] == 4 * params and _fit("llama_1b", "Haar-2", "ddp", gpus=1)["grads"] == 4 * params
    assert sum(v for k, v in fsdp2.items() if k != "total") == fsdp2["total"]


def test_galore_with_fsdp2_is_refused_in_one_line(capsys):
    assert _fit("llama_60m", "GaLore-1/4", "ddp")["states"] > 0
    with pytest.raises(ValueError, match="GaLore") as err:
        _fit("llama_60m", "GaLore-1/4", "fsdp2")
    assert "\n" not in str(err.value) and "distributed=ddp" in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        em.main(["--fit", "--models", "llama_60m", "--optimizers", "galore_1_4", "--strategies", "fsdp2"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "--optimizers" in captured.err and "GaLore" in captured.err
    # in a table with both strategies, GaLore gets DDP rows and a note saying why FSDP2 has none
    assert em.main(["--fit", "--models", "llama_60m", "--optimizers", "galore_1_4"]) == 0
    out = capsys.readouterr().out
    assert "| llama_60m | GaLore-1/4 | DDP x8 |" in out and "FSDP2 x8" not in out.split("\n- ")[0]
    assert "GaLore-1/4 with FSDP2: refused" in out


@pytest.mark.parametrize("argv, argument, valid", [
    (["--optimizers", "adam"], "--optimizers", "adamw, haar2, galore_1_4"),
    (["--strategies", "zero3"], "--strategies", "ddp, fsdp2"),
    (["--gpus", "0"], "--gpus", "integer >= 1"),
    (["--micro-batch", "x"], "--micro-batch", "integer >= 1"),
    (["--seq-len", "-5"], "--seq-len", "integer >= 1"),
    (["--activation-checkpointing", "maybe"], "--activation-checkpointing", "both"),
    (["--capacities", "24,big"], "--capacities", "positive numbers"),
    (["--models", "llama_3m"], "--models", "llama_60m"),
])
def test_bad_fit_arguments_give_one_line(capsys, argv, argument, valid):
    with pytest.raises(SystemExit) as exit_:
        em.main(["--fit", *argv])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and argument in lines[0] and valid in lines[0], lines


def test_activation_formula_equals_saved_tensors():
    """The per-layer and head terms equal the bytes autograd saves in a real forward of a tiny LLaMA with
    SDPA: DDP under bf16 autocast (fp32 weights), FSDP2 as its bf16 parameters compute (a bf16 model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    b, s = 3, 40
    ids = torch.randint(0, TINY["vocab_size"], (b, s))
    for strategy in ("ddp", "fsdp2"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**TINY, attn_implementation="sdpa"))
        if strategy == "fsdp2":
            model.to(torch.bfloat16)
        saved: dict[int, int] = {}

        def pack(t):
            # activations: batch-major tensors (not weights, their bf16 casts, or the RoPE tables)
            batch_major = (t.dim() >= 3 and t.shape[0] == b) or (t.dim() == 2 and t.shape[0] == b * s)
            if t.dtype.is_floating_point and batch_major and not (t.requires_grad and t.grad_fn is None):
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=strategy == "ddp"):
                model(input_ids=ids, labels=ids).loss.backward()
        formula = em.saved_activation_bytes(TINY, b, s, strategy)
        assert sum(saved.values()) == TINY["num_hidden_layers"] * formula["layer"] + formula["head"], strategy
    ddp = em.activation_bytes(em.model_dims("llama_1b"), 32, 256, "ddp", checkpointing=False)
    ckpt = em.activation_bytes(em.model_dims("llama_1b"), 32, 256, "ddp", checkpointing=True)
    assert ckpt < ddp / 3
    assert em.activation_bytes(em.model_dims("llama_1b"), 16, 256, "ddp", False) * 2 == ddp  # linear in b


def test_committed_fit_table_is_what_the_script_prints(capsys):
    committed = (REPO / "results" / "memory" / "fit_llama_1b_7b.md").read_text()
    command = [line for line in committed.splitlines() if line.startswith("- Command: ")][0]
    argv = command.split("`")[1].split()[2:]
    assert argv[:3] == ["--fit", "--models", "llama_1b,llama_7b"]
    assert em.main(argv) == 0
    assert capsys.readouterr().out == committed
    assert "| llama_7b | GWT Haar-2 | FSDP2 x8 | on |" in committed
