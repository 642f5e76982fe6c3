"""Estimated memory of weights and optimizer states (paper Table A4, memory columns of Tables 1 and 4).

Usage:
    python scripts/estimate_memory.py                 # Table A4, Table 1 and Table 4 memory, Markdown
    python scripts/estimate_memory.py --latex
    python scripts/estimate_memory.py --state-bytes 4 # fp32 optimizer states (this project's default)
    python scripts/estimate_memory.py --models qwen2_5_60m,qwen2_5_0_5b   # any configs/model/*.yaml

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paper-dir", default=str(REPO / "results" / "paper"))
    parser.add_argument("--state-bytes", type=int, default=2, choices=(1, 2, 4, 8),
                        help="bytes per optimizer-state number (paper: 2 = bf16)")
    parser.add_argument("--weight-bytes", type=int, default=2, choices=(1, 2, 4, 8))
    parser.add_argument("--unit", default="GB", choices=("GB", "GiB"))
    parser.add_argument("--latex", action="store_true")
    parser.add_argument("--models", default=None,
                        help="comma-separated configs/model names: print only their weights/states table")
    args = parser.parse_args(argv)
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
