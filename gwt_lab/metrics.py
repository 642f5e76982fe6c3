"""GLUE metrics with scikit-learn and scipy (the `evaluate` GLUE metric needs the hub).

All values are in percent (x100), as the paper's Tables 3 and A3 print them. Each task also
gets a `score`: the single number the paper reports for it (Section 5.2: Matthews correlation
for CoLA, Pearson for STS-B, F1 for MRPC, accuracy for the others; for MNLI the matched
accuracy, with mismatched alongside). Key names follow the hub's `evaluate` GLUE metric
(`matthews_correlation`, `pearson`, `spearmanr`, `f1`, `accuracy`).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from gwt_lab.constants import GLUE_SCORE_KEYS as SCORE_KEYS  # the paper's metric per task: the key `score` copies


def accuracy(preds, labels) -> float:
    return 100.0 * float(accuracy_score(labels, preds))


def f1(preds, labels) -> float:
    """F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    return 100.0 * float(f1_score(labels, preds, pos_label=1, average="binary"))


def matthews_corr(preds, labels) -> float:
    return 100.0 * float(matthews_corrcoef(labels, preds))


def _constant(*arrays) -> bool:
    return any(np.ptp(np.asarray(a, dtype=float)) == 0 for a in arrays)


# A correlation with a constant input is undefined; like sklearn's Matthews correlation
# (and unlike scipy's NaN), report 0 so that result.json stays valid JSON.
def pearson(preds, labels) -> float:
    return 0.0 if _constant(preds, labels) else 100.0 * float(pearsonr(preds, labels)[0])


def spearman(preds, labels) -> float:
    return 0.0 if _constant(preds, labels) else 100.0 * float(spearmanr(preds, labels)[0])


def _check(preds, labels, where: str):
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape or preds.ndim != 1 or len(preds) == 0:
        raise ValueError(f"{where}: predictions {preds.shape} and labels {labels.shape} must be "
                         "non-empty 1-D arrays of the same length")
    return preds, labels


def glue_metrics(task: str, preds, labels) -> dict[str, float]:
    """Metrics of one evaluation split. `preds`: class ids, or scores for STS-B."""
    preds, labels = _check(preds, labels, f"glue_metrics({task!r})")
    if task == "cola":
        out = {"matthews_correlation": matthews_corr(preds, labels), "accuracy": accuracy(preds, labels)}
    elif task == "stsb":
        out = {"pearson": pearson(preds, labels), "spearmanr": spearman(preds, labels)}
    elif task in ("mrpc", "qqp"):
        out = {"f1": f1(preds, labels), "accuracy": accuracy(preds, labels)}
    elif task in SCORE_KEYS:
        out = {"accuracy": accuracy(preds, labels)}
    else:
        raise ValueError(f"unknown GLUE task {task!r}; choose one of {sorted(SCORE_KEYS)}")
    return out


def glue_eval_metrics(task: str, split_preds: dict[str, tuple]) -> dict[str, float]:
    """Metrics over a task's evaluation splits, plus `score` (the paper's number).

    `split_preds` maps split name -> (preds, labels). MNLI's two splits give keys suffixed
    `_matched` / `_mismatched`; single-split tasks give unsuffixed keys.
    """
    out: dict[str, float] = {}
    for split, (preds, labels) in split_preds.items():
        metrics = glue_metrics(task, preds, labels)
        suffix = split.replace("validation", "")  # "", "_matched", "_mismatched"
        out.update({k + suffix: v for k, v in metrics.items()})
    if SCORE_KEYS[task] not in out:
        raise ValueError(f"task {task!r} needs split(s) giving {SCORE_KEYS[task]!r}; got {list(split_preds)}")
    out["score"] = out[SCORE_KEYS[task]]
    return out
