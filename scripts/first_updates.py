"""Measure how far the first optimizer steps move a pretrained GLUE model, per matrix.

Fine-tunes a copy of the model for a few steps with each optimizer from the same start and the
same batches, and prints, for selected weights, the RMS and the largest entry of the parameter
change of every step divided by the learning rate (AdamW moves each entry by at most about lr
per step; ratios far above 1 mean the step is much larger than Adam's).

    python scripts/first_updates.py                                   # MiniLM-L6, STS-B, lr 1e-4, 6 steps
    python scripts/first_updates.py --task sst2 --lr 5e-6 --steps 4 --out results/glue/first_updates_sst2.md

Why it exists: GWT as released divides the detail coefficients by sqrt(V) without bias-correcting
V while the step size carries 1/(1 - beta1^t); on step 1 the detail part of the update is
alpha/(1 - beta1) * D / |A| per block, unbounded where a block's approximation A is near 0.
"""
import argparse
import copy
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gwt_lab.data.glue import collate_glue, get_task, load_glue, tokenize_glue  # noqa: E402
from gwt_lab.models import build_glue_model  # noqa: E402
from gwt.optim import build_optimizer  # noqa: E402

WATCH = ("attention.self.query.weight", "intermediate.dense.weight", "output.dense.weight")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="stsb")
    parser.add_argument("--model", default="minilm_l6", choices=["minilm_l6", "roberta_tiny", "roberta_base"])
    parser.add_argument("--data-dir", default=os.path.join(os.environ.get("GWT_DATA_DIR", "../shared/data"), "glue"),
                        help="local GLUE TSV folder (default $GWT_DATA_DIR/glue)")
    parser.add_argument("--tokenizer", default=os.path.join(os.environ.get("GWT_TOKENIZER_DIR", "../shared/tokenizers"),
                                                           "roberta-base"),
                        help="tokenizer folder or hub id for roberta_tiny (default $GWT_TOKENIZER_DIR/roberta-base)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 3, 5], help="encoder layers to report")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.lr <= 0:
        parser.error(f"--steps={args.steps} must be >= 1 and --lr={args.lr} > 0")
    return args


def optimizers(lr: float) -> dict:
    """The GLUE protocol's three optimizers (configs/optimizer + configs/glue_optimizer)."""
    return {
        "AdamW": dict(name="adamw", lr=lr, eps=1e-6),
        "GWT Haar-2": dict(name="gwt", lr=lr, target_modules="encoder_linear", wavelet="haar", level=2, alpha=2.0),
        "GaLore-1/4": dict(name="galore", lr=lr, target_modules="encoder_linear", rank=0.25, scale=2.0,
                           update_proj_gap=500),
    }


def run(model0, batches, options: dict, names: list[str]) -> list[dict]:
    """Per step: {name: (rms, max) of the parameter change} for the watched names."""
    model = copy.deepcopy(model0)
    model.train()
    options = dict(options)
    opt = build_optimizer(model, options.pop("name"), **options)
    params = dict(model.named_parameters())
    torch.manual_seed(0)  # same dropout masks for every optimizer
    steps = []
    for batch in batches:
        before = {n: params[n].detach().clone() for n in names}
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps.append({n: ((params[n].detach() - before[n]).pow(2).mean().sqrt().item(),
                          (params[n].detach() - before[n]).abs().max().item()) for n in names})
    return steps


def main(argv=None) -> dict:
    """Prints (and with --out writes) the table; returns {optimizer: [per step {weight: (rms, max)}]}."""
    args = parse_args(argv)
    task = get_task(args.task)
    model0, tok = build_glue_model(args.model, task.num_labels,
                                   **({"tokenizer": args.tokenizer} if args.model == "roberta_tiny" else {}))
    train = load_glue(args.task, args.data_dir, splits=("train",))["train"]
    train = tokenize_glue(train.select(range(args.batch_size * args.steps)), tok, args.max_length)
    batches = [collate_glue([train[i] for i in range(k * args.batch_size, (k + 1) * args.batch_size)],
                            tok.pad_token_id) for k in range(args.steps)]
    prefix = next(n.split("encoder.layer.")[0] for n, _ in model0.named_parameters() if "encoder.layer." in n)
    names = [f"{prefix}encoder.layer.{layer}.{w}" for layer in args.layers for w in WATCH]
    names = [n for n in names if n in dict(model0.named_parameters())]
    results = {label: run(model0, batches, opts, names) for label, opts in optimizers(args.lr).items()}
    labels = list(results)
    lines = [f"{args.model} on {args.task}, lr {args.lr:g}, batch {args.batch_size}, max length {args.max_length}: "
             "parameter change per step / lr, RMS (max) over the matrix", "",
             "| step | weight | " + " | ".join(labels) + " |", "|" + "---|" * (2 + len(labels))]
    for step in range(args.steps):
        for n in names:
            cells = [f"{results[lab][step][n][0] / args.lr:.2f} ({results[lab][step][n][1] / args.lr:.1f})"
                     for lab in labels]
            lines.append(f"| {step + 1} | {n.split('encoder.')[-1]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"Command: `python scripts/first_updates.py {' '.join(argv or sys.argv[1:])}`\n\n"
                                  f"{text}\n")
    return {label: [{n.split("encoder.")[-1]: v for n, v in step.items()} for step in steps]
            for label, steps in results.items()}


if __name__ == "__main__":
    main()
