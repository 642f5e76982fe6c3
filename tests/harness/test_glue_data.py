"""GLUE loading from the local TSV folder (../shared/data/glue) and from hand-written files."""
import os

import pytest

from gwt_lab.data.glue import GLUE_TASKS, get_task, load_glue, read_glue_tsv, tokenize_glue

GLUE_DIR = os.path.join(os.environ["GWT_DATA_DIR"], "glue")

# (train, dev) example counts of the shared copy: the public GLUE sizes (MRPC train one short).
LOCAL_SIZES = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3667, 408),
               "stsb": (5749, 1500), "rte": (2490, 277), "wnli": (635, 71)}


@pytest.mark.parametrize("task", sorted(LOCAL_SIZES))
def test_local_tasks_load_with_labels_in_range(task):
    splits = load_glue(task, GLUE_DIR)
    assert list(splits) == ["train", "validation"]
    assert (len(splits["train"]), len(splits["validation"])) == LOCAL_SIZES[task]
    spec = get_task(task)
    pair = len(spec.tsv_text) == 2
    for ds in splits.values():
        assert set(ds.column_names) == ({"text_a", "text_b", "label"} if pair else {"text_a", "label"})
        labels = ds["label"]
        if spec.is_regression:
            assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in labels)
        else:
            assert set(labels) == set(range(spec.num_labels))  # every class occurs
        assert all(t.strip() for t in ds["text_a"][:50])


def test_known_rows():
    cola = load_glue("cola", GLUE_DIR)["validation"][0]
    assert cola == {"text_a": "The sailors rode the breeze clear of the rocks.", "label": 1}
    rte = load_glue("rte", GLUE_DIR)["train"][0]
    assert rte["text_b"] == "Weapons of Mass Destruction Found in Iraq." and rte["label"] == 1  # not_entailment
    mrpc = load_glue("mrpc", GLUE_DIR)["train"][0]  # the file starts with a byte-order mark
    assert mrpc["text_a"].startswith("Amrozi accused") and mrpc["label"] == 1
    assert load_glue("stsb", GLUE_DIR)["validation"][1]["label"] == 4.75


def test_qnli_dev_loads_and_train_is_a_clear_error():
    dev = load_glue("qnli", GLUE_DIR, splits=("validation",))["validation"]
    assert len(dev) == 5463 and dev[0]["label"] == 0  # entailment
    with pytest.raises(FileNotFoundError, match=r"QNLI/train\.tsv is missing"):
        load_glue("qnli", GLUE_DIR)


@pytest.mark.parametrize("task,missing", [("mnli", "MNLI/train.tsv"), ("qqp", "QQP/train.tsv")])
def test_absent_tasks_name_the_missing_file(task, missing):
    with pytest.raises(FileNotFoundError) as err:
        load_glue(task, GLUE_DIR)
    assert os.path.join(GLUE_DIR, missing) in str(err.value) and "data.dir" in str(err.value)


def _write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join("\t".join(r) + "\n" for r in rows))


def test_mnli_and_qqp_layouts(tmp_path):
    head = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2"]
    _write(tmp_path / "MNLI/train.tsv", [head + ["label1", "gold_label"],
                                         ["0"] * 8 + ["A man eats.", "Someone eats.", "entailment", "entailment"],
                                         ["1"] * 8 + ["A dog runs.", "A cat sleeps.", "neutral", "contradiction"]])
    for name, gold in (("dev_matched", "neutral"), ("dev_mismatched", "contradiction")):
        _write(tmp_path / f"MNLI/{name}.tsv", [head + ["label1", "label2", "gold_label"],
                                                ["0"] * 8 + ['He said "hi', "x", "a", "b", gold]])
    mnli = load_glue("mnli", str(tmp_path))
    assert list(mnli) == ["train", "validation_matched", "validation_mismatched"]
    assert mnli["train"]["label"] == [0, 2]
    assert mnli["validation_matched"][0] == {"text_a": 'He said "hi', "text_b": "x", "label": 1}
    assert mnli["validation_mismatched"]["label"] == [2]

    qqp_rows = [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], ["5", "1", "2", "Why?", "How?", "1"]]
    _write(tmp_path / "QQP/train.tsv", qqp_rows)
    _write(tmp_path / "QQP/dev.tsv", qqp_rows)
    assert load_glue("qqp", str(tmp_path))["validation"][0] == {"text_a": "Why?", "text_b": "How?", "label": 1}


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"unknown GLUE task 'sst5'.*'cola'"):
        load_glue("sst5", GLUE_DIR)
    with pytest.raises(FileNotFoundError, match="local GLUE folder not found"):
        load_glue("rte", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="has no split 'validation_matched'"):
        load_glue("rte", GLUE_DIR, splits=("validation_matched",))
    bad = tmp_path / "RTE.tsv"
    _write(bad, [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "maybe"]])
    with pytest.raises(ValueError, match=r"RTE.tsv:2: bad label 'maybe'.*not_entailment"):
        read_glue_tsv(str(bad), GLUE_TASKS["rte"])
    _write(bad, [["index", "sentence1", "sentence2", "label"], ["0", "a", "entailment"]])
    with pytest.raises(ValueError, match=r"RTE.tsv:2: expected at least 4 tab-separated fields, got 3"):
        read_glue_tsv(str(bad), GLUE_TASKS["rte"])
    _write(bad, [["index", "premise", "hypothesis", "label"], ["0", "a", "b", "entailment"]])
    with pytest.raises(ValueError, match=r"header lacks column\(s\) \['sentence1', 'sentence2'\]"):
        read_glue_tsv(str(bad), GLUE_TASKS["rte"])


def test_tokenize_pairs_and_truncation():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(os.environ["GWT_TOKENIZER_DIR"], "roberta-base"))
    rte = load_glue("rte", GLUE_DIR, splits=("validation",))["validation"].select(range(8))
    enc = tokenize_glue(rte, tok, max_length=16)
    assert set(enc.column_names) == {"input_ids", "attention_mask", "labels"}
    assert all(len(ids) <= 16 for ids in enc["input_ids"]) and enc["labels"] == rte["label"]
    first = enc[0]["input_ids"]
    assert first[0] == tok.bos_token_id and first.count(tok.eos_token_id) >= 3  # <s> a </s></s> b </s>
    assert tokenize_glue(rte.select([1]), tok, 512)[0]["input_ids"] == tok(rte[1]["text_a"], rte[1]["text_b"])["input_ids"]


@pytest.mark.parametrize("score", ["nan", "NaN", "inf", "-0.5", "5.01", "high", ""])
def test_stsb_scores_outside_0_5_are_refused(tmp_path, score):
    bad = tmp_path / "STS-B.tsv"
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"]
    good = ["0", "g", "f", "y", "0", "s", "s", "a man", "a person", "3.5"]
    _write(bad, [header, good, good[:-1] + [score]])
    with pytest.raises(ValueError, match=rf"STS-B.tsv:3: bad score '{score}' for task 'stsb'; expected a number in \[0, 5\]"):
        read_glue_tsv(str(bad), GLUE_TASKS["stsb"])
    _write(bad, [header, good, good[:-1] + ["0"], good[:-1] + ["5.000"]])
    assert read_glue_tsv(str(bad), GLUE_TASKS["stsb"])["label"] == [3.5, 0.0, 5.0]
