"""Estimated memory of weights and optimizer states (paper Table A4, memory columns of Tables 1 and 4).

Usage:
    python scripts/estimate_memory.py                 # Table A4, Table 1 and Table 4 memory, Markdown
    python scripts/estimate_memory.py --latex
    python scripts/estimate_memory.py --state-bytes 4 # fp32 optimizer states (this project's default)
    python scripts/estimate_memory.py --models qwen2_5_60m,qwen2_5_0_5b   # any configs/model/*.yaml
    python scripts/estimate_memory.py --fit --gpus 8 --micro-batch 32 --seq-len 256   # does it fit: DDP vs FSDP2

Formula (the paper's Appendix A.4 convention: bf16, 2 bytes per number, 1 GB = 1e9 bytes):
- weights = 2 bytes x every parameter of the LLaMA model (embeddings, lm_head, norms included);
- optimizer states, per parameter, from `gwt.memory.estimate_state_bytes`:
  Adam (Full-Rank): two moments of the parameter's size;
  GWT level l on an attention/MLP weight of shape (m, n): two moments of shape
  (m, len(A_l)), len(A_l) = ceil(n / 2**l) for Haar (longer for DB2 with zero padding);
  GaLore / Fira / APOLLO with rank r on such a weight: two moments of r x max(m, n) plus a
  projector of r x min(m, n), with r = hidden_size x fraction (1/4 in Table 1);
  every other parameter (embeddings, lm_head, norms) keeps full Adam moments;
  plus a 4-byte step counter per parameter (and the GWT limiter's previous norm).
- Table 1's memory column = weights + states; Table 4's = states only; Table A4 lists both.
Model shapes come from the model a `configs/model/<name>.yaml` describes (LLaMA, or Qwen2.5 with
grouped-query attention, q/k/v biases and a tied embedding), built on the meta device (no memory
used) by `gwt_lab.models.build_causal_lm`; a LLaMA name without a YAML uses the paper's Table A1
sizes (1B: 32 heads, 24 layers, as the released configuration files), vocabulary 32000. The
targets are the 2-D attention/MLP weights (Qwen's q/k/v biases keep full Adam moments). A last
table covers the Qwen2.5 configs (no paper values).

Does it fit (``--fit``): per-GPU bytes of training with train_llama.py's ``precision=bf16`` on N GPUs
(``--gpus``), one row per model x optimizer (``--optimizers adamw,haar2,galore_1_4``) x strategy
(``--strategies ddp,fsdp2``) x activation checkpointing (``--activation-checkpointing off|on|both``),
micro-batch ``--micro-batch`` sequences of ``--seq-len`` tokens per GPU. P = parameters, fp32 optimizer
states (the project's default). A model from shapes, not a measurement; assumptions:
- DDP (Accelerate, autocast): fp32 weights 4P; fp32 gradients 4P, plus with N > 1 DDP's all-reduce
  buckets of the same size (``gradient_as_bucket_view=False``, torch's default) = 8P; optimizer states
  from ``gwt.memory.estimate_state_bytes`` on the whole model; "bf16 copies": autocast's bf16 cast of
  every weight a linear layer reads (2 bytes each; the input embedding is looked up in fp32 unless tied
  to the output layer), cached from the forward until the backward.
- FSDP2 (``fully_shard`` per decoder layer and on the root, ``MixedPrecisionPolicy(param_dtype=bf16,
  reduce_dtype=fp32)``, ``reshard_after_forward=true``): every parameter split by rows in chunks of
  ceil(rows / N); rank 0 holds the largest shard, shown. fp32 weights and fp32 gradients of that
  shard (4 bytes each); states = ``estimate_state_bytes(..., world_size=N, shard=0)``; "bf16 copies":
  the root's gathered bf16 parameters (embeddings, output layer, final norm: kept gathered), two
  decoder layers' gathered bf16 parameters (the one computing and the one prefetched), and one layer's
  unsharded gradient before its reduce-scatter (bf16 + fp32 copy, 6 bytes per parameter). GaLore (and
  the other whole-matrix optimizers) is refused under FSDP2, as train_llama.py refuses it.
- Activations (s = sequence length, b = micro-batch, h = hidden, i = MLP width, kv = key/value width,
  a = heads, V = vocabulary; bytes): the tensors autograd saves, counted for transformers' LLaMA/Qwen2
  decoder layer with SDPA on a flash or memory-efficient kernel (no s x s attention matrix is stored;
  no dropout). Every layer: SDPA's q, k, v and output in bf16 (s*b*(4h + 4kv)), its fp32 log-sum-exp
  (4*s*b*a), the SwiGLU MLP's gate output, SiLU output, up output and their product in bf16 (8*s*b*i),
  each RMSNorm's fp32 1/rms (4*s*b, two norms). Under DDP's autocast the residual stream is fp32: each
  RMSNorm keeps its fp32 input and output (2 x 8*s*b*h) and q, k, v, gate, up each keep their own bf16
  cast of their input (10*s*b*h): s*b*(30h + 4kv + 8i + 4a + 8) per layer. Under FSDP2's bf16
  parameters each RMSNorm keeps an fp32 upcast and a bf16 copy (2 x 6*s*b*h) and the attention and MLP
  inputs are shared bf16 tensors (4*s*b*h): s*b*(20h + 4kv + 8i + 4a + 8). Head: final norm and output
  layer input (s*b*(10h + 4) DDP, s*b*(8h + 4) FSDP2), the fp32 log-softmax of the loss (4*s*b*V), and
  at the loss's backward the bf16 logits and the fp32 logits gradient (6*s*b*V). Without activation
  checkpointing: layers x per-layer + head. With it (every decoder layer recomputed in the backward):
  each layer keeps only its input (4*s*b*h fp32 under DDP, 2*s*b*h bf16 under FSDP2), plus one
  layer's full activations during its recomputation, plus the head. The per-layer terms equal the
  saved-tensor bytes of a real forward (tests/harness/test_estimate_memory.py); the gradients flowing
  back through the activations (a few layer-sized tensors) and the optimizer step's temporaries are
  not counted.
- Overhead: a constant OVERHEAD_BYTES = 1.5 GiB per GPU for the CUDA context (kernels loaded lazily),
  NCCL buffers and the caching allocator's fragmentation.
- "Fits 24 GB / 80 GB": total <= 24 or 80 GiB (an RTX 3090 has 24 GiB, an A100/H100 80 GB has 80 GiB);
  ``--capacities`` sets other sizes. Sizes are printed in GiB (2^30 bytes).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gwt_lab.results import LLAMA_SIZES, PAPER_LLAMA, Table, load_paper, ours_paper, paper_value  # noqa: E402

# Table A1 (and the released configs for 1B): hidden, intermediate, heads, layers.
TABLE_A1_DIMS = {
    "llama_60m": (512, 1376, 8, 8),
    "llama_130m": (768, 2048, 12, 12),
    "llama_350m": (1024, 2736, 16, 24),
    "llama_1b": (2048, 5461, 32, 24),
    "llama_7b": (4096, 11008, 32, 32),
}
VOCAB_SIZE = 32000
_DIM_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")

# Paper row label -> (estimate_state_bytes name, options). Rank fractions are of the hidden size.
METHODS = {
    "Full-Rank": ("adamw", {}),
    "Haar-1": ("gwt", {"wavelet": "haar", "level": 1}),
    "Haar-2": ("gwt", {"wavelet": "haar", "level": 2}),
    "Haar-3": ("gwt", {"wavelet": "haar", "level": 3}),
    "Haar-4": ("gwt", {"wavelet": "haar", "level": 4}),
    "Haar-5": ("gwt", {"wavelet": "haar", "level": 5}),
    "DB2-2": ("gwt", {"wavelet": "db2", "level": 2}),
    "DB2-3": ("gwt", {"wavelet": "db2", "level": 3}),
    "GaLore-1/4": ("galore", {"rank_fraction": 1 / 4}),
    "GaLore-1/8": ("galore", {"rank_fraction": 1 / 8}),
    # Fira and APOLLO keep GaLore's layout of states (low-rank moments + projector), rank 1/4.
    "APOLLO": ("galore", {"rank_fraction": 1 / 4}),
    "Fira": ("galore", {"rank_fraction": 1 / 4}),
}
A4_ROWS = {"Full-Rank": "Full-Rank", "GWT-2": "Haar-2", "GaLore": "GaLore-1/4"}  # A4 row -> method


def llama_dims(name: str, configs_dir: Path = REPO / "configs" / "model") -> dict:
    """hidden/intermediate/heads/layers/vocab of a LLaMA size, from its YAML or Table A1."""
    path = configs_dir / f"{name}.yaml"
    if path.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        for node in (cfg, cfg.get("config") or {}, cfg.get("arch") or {}):
            if isinstance(node, dict) and all(isinstance(node.get(k), int) for k in _DIM_KEYS):
                dims = {k: node[k] for k in _DIM_KEYS}
                dims["vocab_size"] = node.get("vocab_size", VOCAB_SIZE) if isinstance(node.get("vocab_size"), int) else VOCAB_SIZE
                return dims
    if name not in TABLE_A1_DIMS:
        raise ValueError(f"model={name!r}: no configs/model/{name}.yaml with {', '.join(_DIM_KEYS)} and not a "
                         f"Table A1 size; valid: {', '.join(TABLE_A1_DIMS)}")
    return dict(zip(_DIM_KEYS, TABLE_A1_DIMS[name]), vocab_size=VOCAB_SIZE)


def llama_shapes(dims: dict) -> dict[str, tuple[int, ...]]:
    """{parameter name: shape} of transformers' LlamaForCausalLM with these sizes (meta device)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**dims)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def model_shapes(name: str, configs_dir: Path = REPO / "configs" / "model") -> tuple[dict, int]:
    """({parameter name: shape}, hidden size) of a model config (LLaMA or Qwen2.5), meta device.
    Tied parameters appear once (as ``named_parameters`` lists them)."""
    path = configs_dir / f"{name}.yaml"
    if path.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if isinstance(cfg, dict) and cfg.get("architecture", "llama") != "llama":
            import torch

            from gwt_lab.models import build_causal_lm

            with torch.device("meta"):
                model = build_causal_lm(cfg)
            return {n: tuple(p.shape) for n, p in model.named_parameters()}, cfg["hidden_size"]
    dims = llama_dims(name, configs_dir)
    return llama_shapes(dims), dims["hidden_size"]


def llama_targets(shapes: dict) -> list[str]:
    """The matrices GWT / GaLore act on in the paper: attention and MLP weights."""
    return [n for n, s in shapes.items() if len(s) == 2 and ("attn" in n or "mlp" in n)]


def estimate(shapes: dict, method: str, state_bytes: int = 2, weight_bytes: int = 2,
             hidden_size: int | None = None) -> tuple[int, int]:
    """(weight bytes, optimizer-state bytes) of `method` (a METHODS label) on these shapes."""
    from gwt.memory import estimate_state_bytes

    if method not in METHODS:
        raise ValueError(f"method={method!r} has no memory formula here; valid: {', '.join(METHODS)}")
    name, options = METHODS[method]
    options = dict(options)
    if "rank_fraction" in options:
        if hidden_size is None:
            raise ValueError(f"method={method!r} needs hidden_size for its rank")
        options["rank"] = int(round(hidden_size * options.pop("rank_fraction")))
    weights = weight_bytes * sum(math.prod(s) for s in shapes.values())
    states = estimate_state_bytes(shapes, name, targets=llama_targets(shapes), state_bytes=state_bytes,
                                  param_bytes=state_bytes, **options)
    return weights, states


class Estimator:
    """Caches model shapes; gives GB numbers for (model, method)."""

    def __init__(self, state_bytes: int = 2, weight_bytes: int = 2, unit: float = 1e9):
        self.state_bytes, self.weight_bytes, self.unit = state_bytes, weight_bytes, unit
        self._shapes: dict[str, tuple[dict, int]] = {}

    def _model(self, model: str) -> tuple[dict, int]:
        if model not in self._shapes:
            self._shapes[model] = model_shapes(model)
        return self._shapes[model]

    def gb(self, model: str, method: str) -> tuple[float, float]:
        """(weights GB, states GB)."""
        shapes, hidden = self._model(model)
        weights, states = estimate(shapes, method, self.state_bytes, self.weight_bytes, hidden)
        return weights / self.unit, states / self.unit


# ----------------------------------------------------------------------------- tables
def _note(est: Estimator) -> str:
    unit = "GB (1e9 bytes)" if est.unit == 1e9 else "GiB"
    return (f"Estimated by `scripts/estimate_memory.py` (formula in its docstring): {est.weight_bytes}-byte "
            f"weights, {est.state_bytes}-byte optimizer states, in {unit}; a computation from model shapes, "
            "not a measurement. Paper values in parentheses.")


def table_a4(paper: dict, est: Estimator) -> Table:
    rows_csv = paper["tableA4_memory_estimate"]
    header = ["Method"] + [f"{LLAMA_SIZES[m]} weights / states" for m in PAPER_LLAMA]
    rows = []
    for row in rows_csv:
        method = A4_ROWS.get(row["method"])
        cells = [row["method"]]
        for model in PAPER_LLAMA:
            size = LLAMA_SIZES[model].lower()
            pw = paper_value(rows_csv, "method", row["method"], f"weights_gb_{size}")
            ps = paper_value(rows_csv, "method", row["method"], f"states_gb_{size}")
            if method is None:
                cells.append(f"— ({pw:.2f}G) / — ({ps:.2f}G)")
                continue
            w, s = est.gb(model, method)
            cells.append(f"{w:.2f}G ({pw:.2f}G) / {s:.2f}G ({ps:.2f}G)")
        rows.append(cells)
    notes = [_note(est), "GWT-2 = Haar level 2; GaLore = rank hidden/4. Low-Rank, LoRA and ReLoRA are not "
             "implemented here: only the paper's values are shown."]
    return Table("Table A4: memory estimate of weights / optimizer states", header, rows, notes)


def table1_memory(paper: dict, est: Estimator) -> Table:
    rows_csv = paper["table1_c4_pretrain"]
    header = ["Method"] + [f"{LLAMA_SIZES[m]} weights+states" for m in PAPER_LLAMA]
    rows = []
    for row in rows_csv:
        cells = [row["method"]]
        for model in PAPER_LLAMA:
            paper_gb = paper_value(rows_csv, "method", row["method"], f"mem_gb_{LLAMA_SIZES[model].lower()}")
            ours = "—"
            if row["method"] in METHODS:
                ours = f"{sum(est.gb(model, row['method'])):.2f}G"
            cells.append(ours_paper(ours, paper_gb, suffix="G"))
        rows.append(cells)
    notes = [_note(est), "APOLLO and Fira use the GaLore formula at rank 1/4 (same state layout)."]
    return Table("Table 1 (memory columns): estimated weights + optimizer states", header, rows, notes)


TABLE4_MODELS = ("llama_60m", "llama_130m", "llama_350m")


def table4_memory(paper: dict, est: Estimator) -> Table:
    rows_csv = paper["table4_levels"]
    header = ["Method"] + [f"{LLAMA_SIZES[m]} states" for m in TABLE4_MODELS]
    rows = []
    for row in rows_csv:
        cells = [row["method"]]
        for model in TABLE4_MODELS:
            paper_gb = paper_value(rows_csv, "method", row["method"], f"mem_gb_{LLAMA_SIZES[model].lower()}")
            cells.append(ours_paper(f"{est.gb(model, row['method'])[1]:.2f}G", paper_gb, suffix="G"))
        rows.append(cells)
    return Table("Table 4 (memory columns): estimated optimizer states per Haar level", header, rows, [_note(est)])


QWEN_MODELS = ("qwen2_5_60m", "qwen2_5_130m", "qwen2_5_350m", "qwen2_5_0_5b", "qwen2_5_1b")
MODEL_TABLE_METHODS = ("Full-Rank", "Haar-2", "Haar-3", "DB2-2", "GaLore-1/4")


def models_table(models, est: Estimator, title: str) -> Table:
    """Weights / states of MODEL_TABLE_METHODS for any model configs (no paper values)."""
    header = ["Method"] + [f"{m} weights / states" for m in models]
    rows = []
    for method in MODEL_TABLE_METHODS:
        cells = [method]
        for model in models:
            w, s = est.gb(model, method)
            cells.append(f"{w:.2f}G / {s:.2f}G")
        rows.append(cells)
    notes = [_note(est).replace(" Paper values in parentheses.", ""),
             "Qwen2.5 models tie the input and output embedding: it is counted (and its Adam moments kept) once."]
    return Table(title, header, rows, notes)


# ----------------------------------------------------------------------------- does it fit (DDP vs FSDP2)
GIB = 2**30
# CUDA context (kernels loaded lazily), NCCL buffers and the caching allocator's fragmentation slack.
OVERHEAD_BYTES = int(1.5 * GIB)
# --optimizers name -> (row label, METHODS label). GaLore needs whole matrices: DDP only.
FIT_OPTIMIZERS = {"adamw": ("AdamW", "Full-Rank"), "haar2": ("GWT Haar-2", "Haar-2"),
                  "galore_1_4": ("GaLore-1/4", "GaLore-1/4")}
FIT_STRATEGIES = ("ddp", "fsdp2")
FIT_CHECKPOINTING = {"off": (False,), "on": (True,), "both": (False, True)}
FSDP2_REFUSED = ("GaLore projects whole matrices and cannot run on FSDP2's row-sharded parameters; "
                 "use distributed=ddp")


def _layer_of(name: str) -> int | None:
    """Decoder-layer index of a parameter name (``model.layers.<i>.``), None for the root's."""
    parts = name.split(".")
    for k, part in enumerate(parts[:-1]):
        if part == "layers" and parts[k + 1].isdigit():
            return int(parts[k + 1])
    return None


def saved_activation_bytes(dims: dict, micro_batch: int, seq_len: int, strategy: str) -> dict[str, int]:
    """Bytes of the tensors autograd saves for the backward pass in one micro-batch's forward, without
    activation checkpointing: {"layer": one decoder layer, "layer_input": a layer's input, "head": final
    norm, output layer and loss}. Formula in the module docstring ("Activations")."""
    h, i, v = dims["hidden_size"], dims["intermediate_size"], dims["vocab_size"]
    a = dims["num_attention_heads"]
    kv = h * dims.get("num_key_value_heads", a) // a
    sb = seq_len * micro_batch
    # per layer, both strategies: SDPA's q, k, v, output (bf16) and log-sum-exp (fp32, per head);
    # the SwiGLU MLP's gate, SiLU, up and product (bf16); each RMSNorm's fp32 1/rms per token
    common = sb * (4 * h + 4 * kv + 4 * a + 8 * i + 8)
    if strategy == "ddp":  # autocast: fp32 residual stream; norms keep fp32 input and output;
        # q, k, v, gate and up each keep their own bf16 cast of the normalised input
        return {"layer": common + sb * (16 * h + 10 * h), "layer_input": 4 * sb * h,
                "head": sb * (8 * h + 4 + 2 * h + 4 * v)}
    # FSDP2 with bf16 parameters: bf16 residual stream; norms keep an fp32 upcast and a bf16 copy;
    # q/k/v (and gate/up) share one bf16 input
    return {"layer": common + sb * (12 * h + 4 * h), "layer_input": 2 * sb * h,
            "head": sb * (6 * h + 4 + 2 * h + 4 * v)}


def activation_bytes(dims: dict, micro_batch: int, seq_len: int, strategy: str, checkpointing: bool) -> int:
    """Peak activation bytes one process holds for one micro-batch: the saved tensors (with
    checkpointing: every layer's input plus one layer recomputed in the backward) and the loss's
    transients (bf16 logits returned by the model, the fp32 logits gradient: 6 bytes per logit)."""
    saved = saved_activation_bytes(dims, micro_batch, seq_len, strategy)
    layers = dims["num_hidden_layers"]
    body = layers * saved["layer_input"] + saved["layer"] if checkpointing else layers * saved["layer"]
    return body + saved["head"] + 6 * seq_len * micro_batch * dims["vocab_size"]


def fit_bytes(shapes: dict, dims: dict, method: str, strategy: str, gpus: int, micro_batch: int, seq_len: int,
              checkpointing: bool) -> dict[str, int]:
    """Per-GPU bytes {weights, grads, states, gathered, activations, overhead, total} of training
    `method` (a METHODS label) with `strategy` (ddp | fsdp2) on `gpus` processes, bf16 mixed precision.
    Raises ValueError (one line) for GaLore under FSDP2."""
    from gwt.memory import estimate_state_bytes
    from gwt.optim.distributed import local_rows

    if strategy not in FIT_STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; valid: {', '.join(FIT_STRATEGIES)}")
    name, options = METHODS[method]
    if strategy == "fsdp2" and name == "galore":
        raise ValueError(f"{method} with FSDP2 is refused: {FSDP2_REFUSED}")
    options = dict(options)
    if "rank_fraction" in options:
        options["rank"] = int(round(dims["hidden_size"] * options.pop("rank_fraction")))
    world = gpus if strategy == "fsdp2" else 1
    states = estimate_state_bytes(shapes, name, targets=llama_targets(shapes), state_bytes=4, param_bytes=4,
                                  world_size=world, shard=0, **options)
    numel = {n: math.prod(s) for n, s in shapes.items()}
    total_params = sum(numel.values())
    per_layer: dict[int | None, int] = {}
    for n, count in numel.items():
        per_layer[_layer_of(n)] = per_layer.get(_layer_of(n), 0) + count
    largest_layer = max((c for k, c in per_layer.items() if k is not None), default=0)
    if strategy == "ddp":
        weights = 4 * total_params
        # fp32 .grad plus, with more than one process, DDP's all-reduce buckets of the same size
        # (gradient_as_bucket_view=False, the default)
        grads = 4 * total_params * (2 if gpus > 1 else 1)
        # autocast's bf16 copies of every weight a linear layer reads (kept until the backward);
        # the input embedding is looked up in fp32 unless it is tied to the output layer
        tied = not any(n.endswith("lm_head.weight") for n in shapes)
        gathered = 2 * sum(c for n, c in numel.items()
                           if len(shapes[n]) == 2 and (tied or "embed_tokens" not in n))
    else:
        local = sum(local_rows(s[0], gpus, 0) * math.prod(s[1:]) if s else 1 for s in shapes.values())
        weights = grads = 4 * local
        # bf16 all-gathered: the root (embeddings, output layer, final norm; kept gathered), the current
        # and the prefetched decoder layer; one layer's unsharded gradient (bf16, and fp32 for reduce-scatter)
        gathered = 2 * per_layer.get(None, 0) + 2 * 2 * largest_layer + 6 * largest_layer
    activations = activation_bytes(dims, micro_batch, seq_len, strategy, checkpointing)
    out = {"weights": weights, "grads": grads, "states": states, "gathered": gathered,
           "activations": activations, "overhead": OVERHEAD_BYTES}
    out["total"] = sum(out.values())
    return out


def model_dims(name: str, configs_dir: Path = REPO / "configs" / "model") -> dict:
    """Sizes the activation formula needs (hidden, intermediate, heads, key/value heads, layers,
    vocabulary) of a configs/model/<name>.yaml (LLaMA or Qwen2.5) or a Table A1 LLaMA size."""
    dims = llama_dims(name, configs_dir)
    path = configs_dir / f"{name}.yaml"
    if path.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if isinstance(cfg.get("num_key_value_heads"), int):
            dims["num_key_value_heads"] = cfg["num_key_value_heads"]
    return dims


def fit_command(models, optimizers, strategies, gpus: int, micro_batch: int, seq_len: int,
                checkpointing: str = "both") -> str:
    """The command line that prints this fit table."""
    return (f"python scripts/estimate_memory.py --fit --models {','.join(models)} --optimizers {','.join(optimizers)} "
            f"--strategies {','.join(strategies)} --gpus {gpus} --micro-batch {micro_batch} --seq-len {seq_len} "
            f"--activation-checkpointing {checkpointing}")


def fit_table(models, optimizers, strategies, gpus: int, micro_batch: int, seq_len: int, checkpointing,
              capacities=(24, 80), command: str | None = None) -> Table:
    """The "does it fit" table: one row per model x optimizer x strategy x activation checkpointing."""
    header = ["Model", "Optimizer", "Parallel", "Act. ckpt", "Weights", "Grads", "Opt. states",
              "bf16 copies", "Activations", "Total / GPU",
              "Fits " + " / ".join(f"{c} GB" for c in capacities)]
    rows, refused = [], []
    for model in models:
        shapes, _ = model_shapes(model)
        dims = model_dims(model)
        for opt in optimizers:
            label, method = FIT_OPTIMIZERS[opt]
            for strategy in strategies:
                if strategy == "fsdp2" and METHODS[method][0] == "galore":
                    refused.append(f"{label} with FSDP2: refused: {FSDP2_REFUSED}.")
                    continue
                for ckpt in checkpointing:
                    b = fit_bytes(shapes, dims, method, strategy, gpus, micro_batch, seq_len, ckpt)
                    fits = " / ".join("yes" if b["total"] <= c * GIB else "no" for c in capacities)
                    rows.append([model, label, f"{strategy.upper()} x{gpus}", "on" if ckpt else "off"]
                                + [f"{b[k] / GIB:.2f}" for k in ("weights", "grads", "states", "gathered",
                                                                    "activations", "total")] + [fits])
    notes = [f"Per-GPU GiB (2^30 bytes; a 24 GB card has 24 GiB) estimated by `scripts/estimate_memory.py --fit` "
             f"from model shapes (assumptions in its docstring): precision=bf16, micro-batch {micro_batch}, "
             f"sequence length {seq_len}, fp32 optimizer states; Total adds {OVERHEAD_BYTES / GIB:.1f} GiB of "
             "CUDA context and allocator overhead. An estimate, not a measurement.",
             "DDP: fp32 weights, fp32 gradients (+ all-reduce buckets of the same size), autocast's bf16 weight "
             "copies. FSDP2: weights, gradients and states split by rows over the GPUs (largest shard shown), "
             "bf16 copies = gathered root + two decoder layers + one layer's unsharded gradient."]
    notes += sorted(set(refused))
    if command:
        notes.append(f"Command: `{command}`")
    return Table("Does it fit: per-GPU memory, DDP vs FSDP2", header, rows, notes)


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr naming the argument and the valid values, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _csv_choice(value: str, valid, flag: str, parser) -> list[str]:
    items = [v for v in value.split(",") if v]
    bad = [v for v in items if v not in valid]
    if bad or not items:
        parser.error(f"{flag} {value!r}: {', '.join(bad) or 'empty'} not valid; valid: {', '.join(valid)} "
                     "(comma-separated)")
    return items


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; valid: an integer >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paper-dir", default=str(REPO / "results" / "paper"))
    parser.add_argument("--state-bytes", type=int, default=2, choices=(1, 2, 4, 8),
                        help="bytes per optimizer-state number (paper: 2 = bf16)")
    parser.add_argument("--weight-bytes", type=int, default=2, choices=(1, 2, 4, 8))
    parser.add_argument("--unit", default="GB", choices=("GB", "GiB"))
    parser.add_argument("--latex", action="store_true")
    parser.add_argument("--models", default=None,
                        help="comma-separated configs/model names: print only their weights/states table "
                             "(with --fit: the models of the fit table, default llama_1b,llama_7b)")
    parser.add_argument("--fit", action="store_true",
                        help="print the per-GPU 'does it fit' table (DDP vs FSDP2, bf16 mixed precision)")
    parser.add_argument("--optimizers", default=",".join(FIT_OPTIMIZERS),
                        help=f"--fit: comma-separated, of {', '.join(FIT_OPTIMIZERS)}")
    parser.add_argument("--strategies", default=",".join(FIT_STRATEGIES),
                        help=f"--fit: comma-separated, of {', '.join(FIT_STRATEGIES)}")
    parser.add_argument("--gpus", type=_positive_int, default=8, help="--fit: GPUs (processes)")
    parser.add_argument("--micro-batch", type=_positive_int, default=32,
                        help="--fit: sequences per forward/backward per GPU (trainer.micro_batch_size)")
    parser.add_argument("--seq-len", type=_positive_int, default=256, help="--fit: tokens per sequence")
    parser.add_argument("--activation-checkpointing", default="both", choices=tuple(FIT_CHECKPOINTING),
                        help="--fit: rows without (off), with (on) or both")
    parser.add_argument("--capacities", default="24,80", help="--fit: comma-separated GPU memory sizes in GB (GiB)")
    args = parser.parse_args(argv)
    if args.fit:
        optimizers = _csv_choice(args.optimizers, tuple(FIT_OPTIMIZERS), "--optimizers", parser)
        strategies = _csv_choice(args.strategies, FIT_STRATEGIES, "--strategies", parser)
        try:
            capacities = [float(c) if "." in c else int(c) for c in args.capacities.split(",")]
            assert capacities and all(c > 0 for c in capacities)
        except (ValueError, AssertionError):
            parser.error(f"--capacities {args.capacities!r} is not valid; valid: comma-separated positive numbers")
        if strategies == ["fsdp2"] and all(METHODS[FIT_OPTIMIZERS[o][1]][0] == "galore" for o in optimizers):
            parser.error(f"--optimizers {args.optimizers} with --strategies fsdp2 is refused: {FSDP2_REFUSED}")
        models = [m for m in (args.models or "llama_1b,llama_7b").split(",") if m]
        for model in models:
            try:
                model_dims(model)
            except ValueError as err:
                parser.error(f"--models: {err}")
        command = fit_command(models, optimizers, strategies, args.gpus, args.micro_batch, args.seq_len,
                              args.activation_checkpointing)
        if args.capacities != "24,80":
            command += f" --capacities {args.capacities}"
        table = fit_table(models, optimizers, strategies, args.gpus, args.micro_batch, args.seq_len,
                          FIT_CHECKPOINTING[args.activation_checkpointing], capacities, command)
        print(table.latex() if args.latex else table.markdown())
        return 0
    est = Estimator(args.state_bytes, args.weight_bytes, 1e9 if args.unit == "GB" else 2**30)
    if args.models is not None:
        models = [m for m in args.models.split(",") if m]
        try:
            table = models_table(models, est, "Estimated weights / optimizer states")
        except ValueError as err:
            parser.error(f"--models: {err}")
        print(table.latex() if args.latex else table.markdown())
        return 0
    paper = load_paper(args.paper_dir)
    tables = (table_a4(paper, est), table1_memory(paper, est), table4_memory(paper, est),
              models_table(QWEN_MODELS, est, "Qwen2.5 configs: estimated weights / optimizer states"))
    for table in tables:
        print(table.latex() if args.latex else table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
