"""Fine-tune an encoder on one GLUE task with GWT or a baseline optimizer (the paper's Tables 3, A3).

Defaults are the paper's protocol (Appendix A.2): RoBERTa-base; GWT-Adam on every Linear layer
of the encoder, Haar level 2, alpha 2; batch 16 (CoLA 32); 30 epochs; max length 512; the Haar-2
learning rate of Table A3 per task; linear decay without warm-up; seed 1234; an evaluation at the
end of every epoch. Examples (Hydra overrides; every key is in configs/finetune_glue.yaml):

    python finetune_glue.py task=rte                                  # Table 3 cell: RoBERTa-base, Haar-2
    python finetune_glue.py task=mrpc optimizer=galore                 # GaLore-1/4, scale 2
    python finetune_glue.py task=cola optimizer=adamw                  # full-rank AdamW
    python finetune_glue.py task=sst2 data.dir=null                    # GLUE from the hub (nyu-mll/glue)
    python finetune_glue.py task=mnli optimizer=gwt                    # one Table 3 cell
    python finetune_glue.py -m experiment=tableA3                      # Table A3 learning-rate grid
    python finetune_glue.py task=stsb model=minilm_l6 trainer.epochs=1 trainer.max_length=128   # offline, CPU
    python finetune_glue.py task=rte model=roberta_tiny trainer.max_steps=4 logger=none          # smoke test
    python finetune_glue.py task=rte output_dir=runs/rte resume=true   # continue after SIGTERM / SIGUSR1
    python finetune_glue.py task=rte model=roberta_tiny tokenizer=/path/to/roberta-base   # another tokenizer folder
    torchrun --nproc_per_node 2 finetune_glue.py task=rte              # 2 processes (or accelerate launch)

Each run writes into ``output_dir``: config.yaml, metrics.jsonl (one line per logged step and per
evaluation), checkpoints/step_XXXXXXXX/ and, when finished, result.json with the metrics of every
evaluation, the final one and the best one (``score`` is the paper's number for the task).
"""
import inspect

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from gwt_lab import models
from gwt_lab.config_checks import POSITIVE, POSITIVE_OR_NULL, ConfigError, Text
from gwt_lab.data.glue import collate_glue, get_task, load_glue, tokenize_glue
from gwt_lab.loop import Task, build_checked_optimizer, build_checked_scheduler, run_training
from gwt_lab.metrics import SCORE_KEYS, glue_eval_metrics
from gwt_lab.train import gradient_accumulation_steps
from gwt_lab.train.epochs import epoch_batches, length_sorted_batches, micro_batches


class GlueFinetuning(Task):
    """Sequence classification (regression for STS-B) on one GLUE task, in epochs of seeded batches."""

    precisions = {"fp32": "no", "bf16": "bf16"}  # precision -> Accelerate mixed_precision
    trainer_keys = {"epochs": POSITIVE, "max_steps": POSITIVE_OR_NULL, "micro_batch_size": POSITIVE_OR_NULL,
                    "max_length": POSITIVE, "eval_batch_size": POSITIVE}
    data_keys = {"dir": Text(null=True), "max_train_examples": POSITIVE_OR_NULL, "max_eval_examples": POSITIVE_OR_NULL}

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.name = cfg.task.name
        self.history: list[dict] = []

    def model_keys(self) -> dict:
        builder = getattr(models, str(self.cfg.model.name), None)  # one builder function per model name
        if builder is None:
            return {key: None for key in self.cfg.model}  # build_glue_model names the valid models
        params = inspect.signature(builder).parameters
        return {"name": Text(), **{key: None for key in params if key != "num_labels"}}

    def check(self, acc) -> None:
        cfg, t, world = self.cfg, self.cfg.trainer, acc.num_processes
        task = get_task(cfg.task.name)
        if cfg.task.num_labels != task.num_labels or cfg.task.metric != SCORE_KEYS[task.name]:
            raise ConfigError(f"task.num_labels={cfg.task.num_labels} / task.metric={cfg.task.metric!r} do not "
                              f"match GLUE {task.name!r}: expected {task.num_labels} / {SCORE_KEYS[task.name]!r}")
        if t.micro_batch_size is None and t.total_batch_size % world:
            raise ConfigError(f"trainer.total_batch_size={t.total_batch_size} is not divisible by the {world} "
                              "processes; set trainer.micro_batch_size or change the number of processes")
        self.accum = gradient_accumulation_steps(t.total_batch_size, t.micro_batch_size or t.total_batch_size // world,
                                                 world)
        self.micro = t.total_batch_size // (world * self.accum)
        self.splits = load_glue(cfg.task.name, cfg.data.dir)  # a missing file fails here, before the model loads
        self.acc = acc

    def build(self, acc) -> tuple:
        cfg, t = self.cfg, self.cfg.trainer
        options = {**cfg.model, "tokenizer": cfg.tokenizer}
        try:
            model, self.tokenizer = models.build_glue_model(num_labels=cfg.task.num_labels, **options)
        except (ValueError, OSError, ImportError) as err:
            message = str(err).splitlines()[0]
            if not OmegaConf.is_interpolation(cfg, "tokenizer"):  # set as tokenizer=..., not via the model file
                message = message.replace("model.tokenizer=", "tokenizer=")
            raise ConfigError(f"model={cfg.model.name}: {message}") from None
        self.train_rows, self.eval_rows = self._tokenized_splits()
        self.steps_per_epoch = len(self.train_rows) // t.total_batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.train_rows)} training examples are fewer than trainer.total_batch_size="
                              f"{t.total_batch_size}")
        total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        model = model.to(acc.device)
        optimizer = build_checked_optimizer(model, cfg)
        return model, optimizer, build_checked_scheduler(optimizer, t, total_steps, t.warmup_steps), total_steps

    def _tokenized_splits(self) -> tuple[list[dict], dict[str, list[dict]]]:
        """Tokenized rows (lists of dicts) of the training split and of each evaluation split."""
        cfg, splits = self.cfg, self.splits
        train = splits["train"]
        if cfg.data.max_train_examples:  # a seeded random subset, for reduced-scale runs
            keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
            train = train.select(sorted(keep[: cfg.data.max_train_examples].tolist()))
        evals = {s: d for s, d in splits.items() if s != "train"}
        if cfg.data.max_eval_examples:
            evals = {s: d.select(range(min(len(d), cfg.data.max_eval_examples))) for s, d in evals.items()}
        rows = lambda d: tokenize_glue(d, self.tokenizer, cfg.trainer.max_length).to_list()  # noqa: E731
        return rows(train), {s: rows(d) for s, d in evals.items()}

    def describe(self, n_params: dict) -> str:
        return (f"{self.name}: {len(self.train_rows)} training examples, {self.steps_per_epoch} steps per epoch | "
                f"model {self.cfg.model.name} {n_params['total'] / 1e6:.1f}M parameters | examples:")

    def start(self, local: dict | None, meta: dict) -> None:
        self.history = list(meta.get("history", []))  # the data position follows from the step alone
        self._order_epoch, self._order = None, None

    def batches(self, step: int) -> list[dict]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            self._order = epoch_batches(len(self.train_rows), self.cfg.trainer.total_batch_size, self.cfg.seed, epoch)
            self._order_epoch = epoch
        parts = micro_batches(self._order[pos], self.acc.process_index, self.acc.num_processes, self.micro)
        return [collate_glue([self.train_rows[j] for j in ids], self.tokenizer.pad_token_id) for ids in parts]

    def counts(self, batch: dict) -> tuple[float, float]:
        """(examples, non-padding tokens)."""
        return float(len(batch["labels"])), float(batch["attention_mask"].sum())

    def loss_sum(self, model, batch: dict) -> torch.Tensor:
        """Summed cross-entropy (classification) or squared error (STS-B regression) of the examples."""
        batch = {k: v.to(self.acc.device) for k, v in batch.items()}
        with self.acc.autocast():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        if logits.shape[-1] == 1:
            return F.mse_loss(logits.squeeze(-1), batch["labels"].float(), reduction="sum")
        return F.cross_entropy(logits, batch["labels"], reduction="sum")

    def position(self, step: int) -> dict:
        return {"epoch": round(step / self.steps_per_epoch, 4)}

    @torch.no_grad()
    def evaluate(self, model, step: int) -> dict:
        """The task's metrics on every evaluation split (examples shared out over the processes)."""
        from accelerate.utils import gather_object

        acc, pad_id = self.acc, self.tokenizer.pad_token_id
        model.eval()
        split_preds = {}
        for split, rows in self.eval_rows.items():
            preds, labels = [], []
            for idx in length_sorted_batches([len(r["input_ids"]) for r in rows], self.cfg.trainer.eval_batch_size,
                                             acc.process_index, acc.num_processes):
                batch = {k: v.to(acc.device) for k, v in collate_glue([rows[i] for i in idx], pad_id).items()}
                with acc.autocast():
                    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
                preds += (logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)).tolist()
                labels += batch["labels"].tolist()
            split_preds[split] = (gather_object(preds), gather_object(labels))
        model.train()
        scores = glue_eval_metrics(self.cfg.task.name, split_preds)
        self.history.append({"step": step, **self.position(step), **scores})
        return {**self.position(step), **{f"eval_{k}": v for k, v in scores.items()}}

    def meta_state(self) -> dict:
        return {"history": self.history}

    def result(self, last_eval: dict, common: dict) -> tuple[dict, str]:
        final, best = self.history[-1], max(self.history, key=lambda e: e["score"])
        metrics = {**{k: v for k, v in final.items() if k not in ("step", "epoch")}, **common,
                   "epochs": final["epoch"], "final": final, "best": best, "per_epoch": self.history,
                   "train_examples": len(self.train_rows)}
        return metrics, (f"{self.cfg.task.name} {self.cfg.task.metric}: final {final['score']:.2f}, best "
                         f"{best['score']:.2f} (step {best['step']}) after {final['step']} steps")


def run(cfg: DictConfig) -> dict | None:
    """Fine-tune as configured; returns the result metrics (None if the run had already finished)."""
    return run_training(cfg, GlueFinetuning(cfg))


if __name__ == "__main__":
    hydra.main(version_base="1.3", config_path="configs", config_name="finetune_glue")(run)()
