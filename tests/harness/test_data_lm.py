"""gwt_lab.data.lm: tokenisation, padding labels, packing, rank split, exact resume, eval token budget."""
import gzip
import json
import os

import pytest
import torch

from gwt_lab.data.lm import (IGNORE_INDEX, DataError, TextSource, TokenStream, check_source, epoch_documents, eval_batches,
                         load_tokenizer)

DATA = os.environ["GWT_DATA_DIR"]
C4 = TextSource(source="local", dir=os.path.join(DATA, "c4", "en"))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("t5-base")


def _docs(texts):
    return lambda epoch: [{"text": t} for t in texts]


def test_t5_tokenizer_ids(tok):
    ids = tok("translate English to German: The house is wonderful.")["input_ids"]
    assert ids == [13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5, 1] and tok.pad_token_id == 0


def test_truncate_and_pad_labels(tok):
    stream = TokenStream(_docs(["a short one", "word " * 100]), tok, seq_len=16)
    batch = stream.next_batch(2)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == (2, 16)
    n_short = len(tok("a short one")["input_ids"])
    assert ids[0, n_short - 1] == tok.eos_token_id and (ids[0, n_short:] == 0).all()
    assert (labels[0, n_short:] == IGNORE_INDEX).all() and torch.equal(labels[0, :n_short], ids[0, :n_short])
    assert (labels[1] != IGNORE_INDEX).all() and ids[1, -1] == tok.eos_token_id  # truncated, EOS kept


def test_pack_concatenates_documents(tok):
    texts = ["first document here", "second one", "third document is a bit longer than the others"]
    stream = TokenStream(_docs(texts), tok, seq_len=8, pack=True)
    flat = [t for text in texts for t in tok(text)["input_ids"]]
    got = torch.cat([stream.next_batch(1)["input_ids"].flatten() for _ in range(len(flat) // 8)]).tolist()
    assert got == flat[:len(got)]
    assert (stream.next_batch(1)["labels"] != IGNORE_INDEX).all()  # no padding in packed data; wraps to epoch 1


def test_sentinel_ids_become_unk(tok):
    stream = TokenStream(_docs(["<extra_id_0> hello"]), tok, seq_len=8, vocab_size=32000)
    ids = stream.next_batch(1)["input_ids"]
    assert ids.max() < 32000 and tok.unk_token_id in ids.tolist()[0]


@pytest.mark.parametrize("pack", [False, True])
def test_resume_position_is_exact(tok, pack):
    docs = epoch_documents(C4, "train", shuffle_seed=42, shuffle_buffer=1000)
    ref = TokenStream(docs, tok, seq_len=64, pack=pack)
    batches = [ref.next_batch(3) for _ in range(5)]
    first = TokenStream(docs, tok, seq_len=64, pack=pack)
    for _ in range(2):
        first.next_batch(3)
    state = json.loads(json.dumps(first.state_dict()))  # survives serialisation
    resumed = TokenStream(docs, tok, seq_len=64, pack=pack, state=state)
    for expected in batches[2:]:
        assert torch.equal(resumed.next_batch(3)["input_ids"], expected["input_ids"])


def test_rank_split_partitions_the_global_order(tok):
    whole = TokenStream(epoch_documents(C4, "train", 42, 1000), tok, seq_len=16).next_batch(6)["input_ids"]
    ranks = [TokenStream(epoch_documents(C4, "train", 42, 1000, rank=r, world_size=2), tok, seq_len=16)
             .next_batch(3)["input_ids"] for r in range(2)]
    assert torch.equal(ranks[0], whole[0::2]) and torch.equal(ranks[1], whole[1::2])


def test_shuffle_seed_changes_order(tok):
    a = TokenStream(epoch_documents(C4, "train", 42, 1000), tok, seq_len=16).next_batch(4)["input_ids"]
    b = TokenStream(epoch_documents(C4, "train", 7, 1000), tok, seq_len=16).next_batch(4)["input_ids"]
    assert not torch.equal(a, b)


def test_eval_batches_exact_token_budget(tok):
    texts = ["one two three four five six seven", "alpha beta gamma", "x y z w v u t s r q p o n m"]
    batches = eval_batches([{"text": t} for t in texts], tok, seq_len=12, batch_size=2, max_tokens=15)
    labels = torch.cat([b["labels"] for b in batches])
    assert int((labels[:, 1:] != IGNORE_INDEX).sum()) == 15 and (labels[:, 0] == IGNORE_INDEX).all()
    everything = eval_batches([{"text": t} for t in texts], tok, seq_len=12, batch_size=2, max_tokens=10**6)
    assert sum(b["input_ids"].shape[0] for b in everything) == 3  # smaller corpus: all of it


def test_local_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.dir="):
        check_source(TextSource(source="local", dir=str(tmp_path / "missing")))
    with pytest.raises(FileNotFoundError, match="no non-empty train shard"):
        check_source(TextSource(source="local", dir=str(tmp_path)))
    with gzip.open(tmp_path / "c4-train.00000-of-00001.json.gz", "wt") as f:
        f.write(json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(FileNotFoundError, match="validation"):
        check_source(TextSource(source="local", dir=str(tmp_path)))
    with pytest.raises(ValueError, match="data.source='s3'"):
        check_source(TextSource(source="s3"))


def test_missing_tokenizer_folder():
    with pytest.raises(FileNotFoundError, match="tokenizer='./no/such/tokenizer'"):
        load_tokenizer("./no/such/tokenizer")


# ---------------------------------------------------------------------------------------- unusable shards
def _shards(folder, train_lines, gz=True, validation_lines=None):
    """A local C4-format folder: one train shard (``train_lines``: JSON lines as text) and one validation shard."""
    folder.mkdir(exist_ok=True)
    good = [json.dumps({"text": f"document number {i} has a few words"}) for i in range(20)]
    for name, lines in (("c4-train.00000-of-00001.json.gz", train_lines),
                        ("c4-validation.00000-of-00001.json.gz", validation_lines or good)):
        data = "".join(line + "\n" for line in lines)
        if gz and "train" in name:
            with gzip.open(folder / name, "wt") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(gzip.compress(data.encode()) if "validation" in name else data.encode())
    return TextSource(source="local", dir=str(folder))


GOOD = [json.dumps({"text": f"line {i} of text"}) for i in range(30)]
BAD_SHARDS = {
    "not_gzip": (dict(train_lines=GOOD, gz=False), r"c4-train\.00000-of-00001\.json\.gz is not a gzip file"),
    "malformed_json": (dict(train_lines=GOOD[:7] + ['{"text": "cut'] + GOOD[7:]),
                       r"c4-train\.00000-of-00001\.json\.gz:8: not a JSON object"),
    "no_text_field": (dict(train_lines=GOOD[:3] + [json.dumps({"content": "x"})] + GOOD[3:]),
                      r"json\.gz:4: record has no 'text' field \(data\.text_key='text'\); its fields are \['content'\]"),
    "text_not_string": (dict(train_lines=GOOD[:2] + [json.dumps({"text": 7})]),
                        r"json\.gz:3: 'text' has type int, not string"),
    "only_empty_texts": (dict(train_lines=[json.dumps({"text": ""})] * 5 + [json.dumps({"text": "  "})]),
                         r"every 'text' in the train shards of data\.dir=.* is empty"),
    "only_empty_validation": (dict(train_lines=GOOD, validation_lines=[json.dumps({"text": ""})] * 3),
                              r"every 'text' in the validation shards .* is empty.*nothing to evaluate"),
}


@pytest.mark.parametrize("case", list(BAD_SHARDS))
def test_unusable_shards_fail_before_any_work_naming_the_file(tmp_path, case):
    kwargs, message = BAD_SHARDS[case]
    src = _shards(tmp_path / "data", **kwargs)
    with pytest.raises(DataError, match=message) as exc:
        check_source(src)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("bad, message", [
    ('{"text": "cut', r"json\.gz:151: not a JSON object"),
    (json.dumps({"body": "x"}), r"json\.gz:151: record has no 'text' field \(data\.text_key='text'\)"),
], ids=["malformed_json", "no_text_field"])
def test_bad_record_past_the_checked_head_names_file_and_line(tmp_path, tok, bad, message):
    lines = [json.dumps({"text": f"line {i} of text"}) for i in range(150)] + [bad] + GOOD
    src = _shards(tmp_path / "data", train_lines=lines)
    check_source(src)  # the first CHECK_LINES records are fine
    stream = TokenStream(epoch_documents(src, "train", 42, 1000), tok, seq_len=16)
    with pytest.raises(DataError, match=message):
        for _ in range(200):
            stream.next_batch(4)


def test_empty_documents_give_errors_not_zero_token_runs(tok):
    with pytest.raises(DataError, match="every 'text' in .* is empty"):
        TokenStream(_docs(["", " ", ""]), tok, seq_len=8).next_batch(8)
    with pytest.raises(DataError, match="no token to evaluate"):
        eval_batches([{"text": ""}, {"text": ""}], tok, seq_len=8, batch_size=2, max_tokens=100)
    with pytest.raises(DataError, match=r"no string 'text' field \(data\.text_key='text'\); its fields are \['body'\]"):
        TokenStream(lambda epoch: [{"body": "hello"}], tok, seq_len=8).next_batch(1)


def test_stream_errors_of_a_hub_source_name_the_dataset():
    from gwt_lab.data.lm import CheckedDocuments

    class Broken:
        def __iter__(self):
            yield {"text": "fine"}
            yield {"body": "no text"}

    docs = iter(CheckedDocuments(Broken(), TextSource(source="hub", path="allenai/c4"), "train"))
    assert next(docs) == {"text": "fine"}
    with pytest.raises(DataError, match=r"^the train split of data\.path='allenai/c4': a record has no string 'text' "
                                        r"field \(data\.text_key='text'\); its fields are \['body'\]$"):
        next(docs)
    docs = iter(CheckedDocuments(_raising(), TextSource(source="hub"), "validation"))
    with pytest.raises(DataError, match=r"^the validation split of data\.path='allenai/c4': RuntimeError: connection reset$"):
        list(docs)


def _raising():
    yield {"text": "ok"}
    raise RuntimeError("connection reset")


def test_truncated_gzip_shard_names_the_file(tmp_path):
    lines = [json.dumps({"text": f"document {i} " * 20}) for i in range(3000)]
    src = _shards(tmp_path / "data", train_lines=lines)
    shard = tmp_path / "data" / "c4-train.00000-of-00001.json.gz"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) * 2 // 3])  # a copy that stopped early
    check_source(src)  # the first records are intact
    with pytest.raises(DataError, match=r"c4-train\.00000-of-00001\.json\.gz cannot be read \(EOFError"):
        epoch_documents(src, "train", 42, 1000)
