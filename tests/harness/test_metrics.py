"""GLUE metrics against values worked out by hand (percent, as in the paper's tables)."""
import math

import pytest

from gwt_lab.metrics import SCORE_KEYS, glue_eval_metrics, glue_metrics


def test_matthews_correlation_cola():
    # TP=1 FP=1 TN=2 FN=0: (1*2 - 1*0) / sqrt(2*1*3*2) = 2/sqrt(12)
    m = glue_metrics("cola", [1, 1, 0, 0], [1, 0, 0, 0])
    assert m["matthews_correlation"] == pytest.approx(100 * 2 / math.sqrt(12))
    assert m["accuracy"] == pytest.approx(75.0)


def test_matthews_is_zero_for_a_constant_prediction():
    assert glue_metrics("cola", [1, 1, 1, 1], [1, 0, 1, 0])["matthews_correlation"] == 0.0


def test_f1_and_accuracy_mrpc_qqp():
    # TP=2 FP=1 FN=0: precision 2/3, recall 1, F1 = 0.8; 3 of 4 right
    for task in ("mrpc", "qqp"):
        m = glue_metrics(task, [1, 1, 0, 1], [1, 0, 0, 1])
        assert m["f1"] == pytest.approx(80.0)
        assert m["accuracy"] == pytest.approx(75.0)


def test_pearson_and_spearman_stsb():
    # deviations (-1,0,1) and (-4/3,-1/3,5/3): r = 3 / sqrt(2 * 42/9)
    m = glue_metrics("stsb", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert m["pearson"] == pytest.approx(100 * 3 / math.sqrt(2 * 42 / 9))
    assert m["spearmanr"] == pytest.approx(100.0)
    # rank differences (0, 1, -1): rho = 1 - 6*2 / (3*(9-1)) = 0.5
    assert glue_metrics("stsb", [1.0, 3.0, 2.0], [1.0, 2.0, 3.0])["spearmanr"] == pytest.approx(50.0)


def test_constant_regression_output_gives_zero_not_nan():
    m = glue_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 4.0])
    assert m == {"pearson": 0.0, "spearmanr": 0.0}


def test_accuracy_tasks():
    for task in ("sst2", "rte", "qnli", "wnli"):
        assert glue_metrics(task, [0, 1, 1], [0, 1, 0]) == {"accuracy": pytest.approx(200 / 3)}


def test_mnli_matched_and_mismatched_and_scores():
    m = glue_eval_metrics("mnli", {
        "validation_matched": ([0, 1, 2, 2], [0, 1, 2, 0]),
        "validation_mismatched": ([0, 0], [0, 1]),
    })
    assert m["accuracy_matched"] == pytest.approx(75.0)
    assert m["accuracy_mismatched"] == pytest.approx(50.0)
    assert m["score"] == pytest.approx(75.0)
    cola = glue_eval_metrics("cola", {"validation": ([1, 1, 0, 0], [1, 0, 0, 0])})
    assert cola["score"] == cola["matthews_correlation"]
    assert glue_eval_metrics("stsb", {"validation": ([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])})["score"] < 100
    assert set(SCORE_KEYS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown GLUE task 'boolq'"):
        glue_metrics("boolq", [0], [0])
    with pytest.raises(ValueError, match="same length"):
        glue_metrics("sst2", [0, 1], [0])
    with pytest.raises(ValueError, match="same length"):
        glue_metrics("sst2", [], [])
