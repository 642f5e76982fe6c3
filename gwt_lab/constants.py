"""Facts the harness uses in several modules, each stated once here."""

# Label of a position that takes no loss (padding, the first token, tokens past an evaluation
# budget); torch's cross_entropy skips it with ``ignore_index``.
IGNORE_INDEX = -100

# GLUE task -> the metric the paper reports for it (Section 5.2): the key of the evaluation
# metrics that ``score`` copies in result.json, and the ``task.metric`` of configs/task/<task>.yaml.
GLUE_SCORE_KEYS = {
    "cola": "matthews_correlation",
    "stsb": "pearson",
    "mrpc": "f1",
    "qqp": "accuracy",
    "mnli": "accuracy_matched",
    "qnli": "accuracy",
    "rte": "accuracy",
    "sst2": "accuracy",
    "wnli": "accuracy",
}
