"""Language-modelling text for pre-training: C4 from the hub or local C4-format json.gz shards.

Sources (``data.source``):
- ``hub``: ``datasets.load_dataset(path, name, split=..., streaming=True)``, e.g. ``allenai/c4`` / ``en``.
- ``local``: a folder of json.gz (or jsonl) shards with one ``{"text": ...}`` object per line, named
  like the C4 files (``c4-train.00000-of-01024.json.gz``, ``c4-validation.*``); the IMDb corpus in
  ``$GWT_DATA_DIR/imdb/en`` has the same layout.

Pipeline per process (the released GaLore/GWT protocol): shuffle the document stream
(``shuffle_seed`` 42, a buffer of ``shuffle_buffer`` documents and the shard order), split it by
rank (``datasets.distributed.split_dataset_by_node``), tokenise with the T5 tokenizer (EOS
appended), then either
- ``pack=false``: one sequence per document, truncated / right-padded to ``seq_len``; pad
  positions get label -100 (ignored), or
- ``pack=true``: documents concatenated (each ends with EOS) and cut into ``seq_len`` chunks.

``TokenStream.state_dict()`` is the exact data position (epoch, documents consumed, the
packing remainder): a resumed stream skips the consumed documents without tokenising them and
continues with the same sequences an uninterrupted run would have seen.
"""
from __future__ import annotations

import glob
import gzip
import itertools
import json
import os
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from gwt_lab.constants import IGNORE_INDEX

DATA_SOURCES = ("hub", "local")


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------
def resolve_tokenizer_path(name_or_path: str, key: str = "tokenizer") -> str:
    """A local folder as given, ``$GWT_TOKENIZER_DIR/<name>`` when that folder exists (offline
    copies of hub tokenizers), else the hub id unchanged. A name that looks like a path but is not
    a folder raises ``FileNotFoundError`` naming ``key``."""
    name_or_path = str(name_or_path)
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        return expanded
    looks_local = name_or_path.startswith((os.sep, ".", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise FileNotFoundError(f"{key}={name_or_path!r}: no such tokenizer folder (give a folder with "
                                "tokenizer.json / spiece.model, or a hub id such as 't5-base')")
    local_root = os.environ.get("GWT_TOKENIZER_DIR")
    if local_root and os.path.isdir(os.path.join(local_root, name_or_path)):
        return os.path.join(local_root, name_or_path)
    return name_or_path


def load_tokenizer(name_or_path: str, key: str = "tokenizer"):
    """``AutoTokenizer`` from a folder or the hub, with one clear error when it cannot be loaded."""
    from transformers import AutoTokenizer

    path = resolve_tokenizer_path(name_or_path, key)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{key}={name_or_path!r} could not be loaded ({type(err).__name__}: {str(err).splitlines()[0]}). Pass a "
            "local tokenizer folder, e.g. tokenizer=$GWT_TOKENIZER_DIR/t5-base, or a reachable hub id.") from None
    if tok.pad_token_id is None:
        raise ValueError(f"{key}={name_or_path!r} has no pad token; the LM pipeline needs one (T5 uses id 0)")
    tok.model_max_length = int(1e9)  # sequences are cut by this module, not by the tokenizer's limit
    return tok


# --------------------------------------------------------------------------------------------
# Document streams
# --------------------------------------------------------------------------------------------
@dataclass
class TextSource:
    """Where documents come from. ``split`` is ``train`` or ``validation``."""

    source: str = "hub"
    path: str = "allenai/c4"          # hub dataset id (source=hub)
    config_name: str | None = "en"    # hub dataset configuration (source=hub)
    dir: str | None = None            # local folder (source=local)
    train_files: str = "*train*.json*"
    validation_files: str = "*validation*.json*"
    text_key: str = "text"


def local_files(src: TextSource, split: str) -> list[str]:
    """Sorted shard files of ``split`` in ``src.dir``; ``FileNotFoundError`` naming ``data.dir`` if none."""
    pattern = src.train_files if split == "train" else src.validation_files
    if not src.dir or not os.path.isdir(src.dir):
        raise FileNotFoundError(f"data.dir={src.dir!r} is not a folder; point it at a folder of C4-format "
                                "json.gz shards (e.g. data.dir=$GWT_DATA_DIR/c4/en)")
    files = sorted(glob.glob(os.path.join(src.dir, pattern)))
    files = [f for f in files if os.path.isfile(f) and os.path.getsize(f) > 0]
    if not files:
        key = "data.train_files" if split == "train" else "data.validation_files"
        raise FileNotFoundError(f"data.dir={src.dir!r} holds no non-empty {split} shard matching {key}={pattern!r}")
    return files


class DataError(ValueError):
    """Unusable data (not gzip, malformed JSON, missing or empty text); the message names the file."""


class EmptyDocumentsError(DataError):
    """A document stream has no document, or no document with text."""


CHECK_LINES = 100  # records read from the start of every shard before any work
_CHECKED: set = set()


def _shard_lines(path: str):
    """``(line number, line)`` of a json.gz / jsonl shard; ``DataError`` naming the file if it cannot be read."""
    try:
        if path.endswith(".gz"):
            with open(path, "rb") as raw:
                if raw.read(2) != b"\x1f\x8b":
                    raise DataError(f"{path} is not a gzip file (its name ends in .gz); data.dir shards must be "
                                    "gzip-compressed JSON lines (or plain .jsonl/.json files)")
        with (gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")) as f:
            yield from enumerate(f, start=1)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise DataError(f"{path} cannot be read ({type(err).__name__}: {err})") from None


def _check_record(line: str, path: str, line_no: int, text_key: str) -> str | None:
    """The text of one JSON line (None for a blank line); ``DataError`` naming file and line otherwise."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError as err:
        raise DataError(f"{path}:{line_no}: not a JSON object ({err})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{line_no}: not a JSON object (a {type(record).__name__})")
    if text_key not in record:
        raise DataError(f"{path}:{line_no}: record has no {text_key!r} field (data.text_key={text_key!r}); its "
                        f"fields are {sorted(record)[:10]}")
    if not isinstance(record[text_key], str):
        raise DataError(f"{path}:{line_no}: {text_key!r} has type {type(record[text_key]).__name__}, not string "
                        f"(data.text_key={text_key!r})")
    return record[text_key]


def check_local_shards(src: TextSource, split: str, max_lines: int | None = CHECK_LINES) -> None:
    """Read the first ``max_lines`` records of every ``split`` shard (None: all of them): gzip, JSON objects,
    a string ``text_key``. When every shard was read to its end and no text is non-empty, ``DataError``."""
    files = local_files(src, split)
    key = (split, src.text_key, max_lines, tuple((f, os.path.getmtime(f), os.path.getsize(f)) for f in files))
    if key in _CHECKED:
        return
    has_text, read_all = False, True
    for path in files:
        complete = False
        for line_no, line in _shard_lines(path):
            text = _check_record(line, path, line_no, src.text_key)
            has_text = has_text or bool(text and text.strip())
            if max_lines is not None and line_no >= max_lines:
                break
        else:
            complete = True
        read_all = read_all and complete
    if read_all and not has_text:
        raise DataError(f"every {src.text_key!r} in the {split} shards of data.dir={src.dir!r} is empty "
                        f"({', '.join(os.path.basename(f) for f in files)}); there is nothing to "
                        f"{'train on' if split == 'train' else 'evaluate'}")
    _CHECKED.add(key)


def check_source(src: TextSource) -> None:
    """Cheap checks before any work: known source, local files present for both splits, and the first
    records of every local shard readable (``check_local_shards``)."""
    if src.source not in DATA_SOURCES:
        raise ValueError(f"data.source={src.source!r} is unknown; choose one of {list(DATA_SOURCES)}")
    if src.source == "local":
        local_files(src, "train")
        local_files(src, "validation")
        check_local_shards(src, "train")
        check_local_shards(src, "validation")


def _describe(src: TextSource, split: str) -> str:
    if src.source == "local":
        return f"the {split} shards of data.dir={src.dir!r}"
    return f"the {split} split of data.path={src.path!r}"


class CheckedDocuments:
    """Iterates ``ds`` and checks that every record has a string ``text_key``. A bad record or a read error
    raises ``DataError``; for local shards the files are then scanned to name the bad file and line."""

    def __init__(self, ds, src: TextSource, split: str):
        self.ds, self.src, self.split = ds, src, split
        self.description = _describe(src, split)

    def _fail(self, problem: str):
        if self.src.source == "local":
            check_local_shards(self.src, self.split, max_lines=None)  # raises naming file and line
        raise DataError(f"{self.description}: {problem}")

    def __iter__(self):
        key = self.src.text_key
        it = iter(self.ds)
        while True:
            try:
                doc = next(it)
            except StopIteration:
                return
            except DataError:
                raise
            except Exception as err:  # datasets/pyarrow/gzip errors do not name the file
                self._fail(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            if not isinstance(doc.get(key), str):
                self._fail(f"a record has no string {key!r} field (data.text_key={key!r}); its fields are "
                           f"{sorted(doc)[:10]}")
            yield doc


def open_documents(src: TextSource, split: str, shuffle_seed: int | None, shuffle_buffer: int,
                   rank: int = 0, world_size: int = 1):
    """A streaming ``datasets.IterableDataset`` of ``split``: shuffled (when ``shuffle_seed`` is not
    None) and split by rank. ``set_epoch(e)`` on it reshuffles for epoch ``e``."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    check_source(src)
    if src.source == "hub":
        ds = datasets.load_dataset(src.path, src.config_name, split=split, streaming=True)
    else:
        try:  # reads the first chunk of the first shard to infer the columns
            ds = datasets.load_dataset("json", data_files=local_files(src, split), split="train", streaming=True)
        except Exception as err:  # datasets/pyarrow/gzip errors do not name the file: find it
            check_local_shards(src, split, max_lines=None)
            raise DataError(f"{_describe(src, split)} cannot be opened ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=int(shuffle_seed), buffer_size=int(shuffle_buffer))
    if world_size > 1:
        ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    return ds


# --------------------------------------------------------------------------------------------
# Token sequences with an exact, resumable position
# --------------------------------------------------------------------------------------------
class TokenStream:
    """Endless stream of ``seq_len`` token sequences from a document stream.

    Args:
        documents: ``epoch -> iterable of {text_key: str}`` (the epoch reshuffles; see ``open_documents``).
        tokenizer: a Hugging Face tokenizer that appends EOS.
        seq_len: sequence length.
        pack: concatenate documents instead of one padded sequence per document.
        vocab_size: ids >= vocab_size (T5's 100 sentinel ids above the model's 32000) become UNK.
        state: a ``state_dict()`` to resume from.
    """

    def __init__(self, documents: Callable[[int], Iterable[dict]], tokenizer, seq_len: int, pack: bool = False,
                 text_key: str = "text", vocab_size: int | None = None, state: dict | None = None,
                 tokenize_batch: int = 64):
        self.documents = documents
        self.tokenizer = tokenizer
        self.seq_len = int(seq_len)
        self.pack = bool(pack)
        self.text_key = text_key
        self.vocab_size = vocab_size
        self.pad_id = int(tokenizer.pad_token_id)
        self.unk_id = int(tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id)
        self.tokenize_batch = int(tokenize_batch)
        state = dict(state or {})
        self.epoch = int(state.get("epoch", 0))
        self.docs_done = int(state.get("docs", 0))     # documents of this epoch fully consumed
        self.buffer: list[int] = list(state.get("buffer", []))  # packing remainder
        self._iter: Iterator[list[int]] | None = None
        self._epoch_has_text = self.docs_done > 0  # a resumed epoch already had text

    def _text(self, doc) -> str:
        text = doc.get(self.text_key) if isinstance(doc, dict) else None
        if not isinstance(text, str):
            fields = sorted(doc)[:10] if isinstance(doc, dict) else type(doc).__name__
            raise DataError(f"a document of {getattr(self.documents, 'description', 'the documents')} has no string "
                            f"{self.text_key!r} field (data.text_key={self.text_key!r}); its fields are {fields}")
        if text.strip():
            self._epoch_has_text = True
        return text

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "docs": self.docs_done, "buffer": list(self.buffer),
                "seq_len": self.seq_len, "pack": self.pack}

    def _encode(self, texts: list[str]) -> list[list[int]]:
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=not self.pack,
                             max_length=None if self.pack else self.seq_len)["input_ids"]
        if self.vocab_size is not None:
            ids = [[t if t < self.vocab_size else self.unk_id for t in doc] for doc in ids]
        return ids

    def _sequences(self) -> Iterator[list[int]]:
        while True:
            docs = iter(self.documents(self.epoch))
            docs = itertools.islice(docs, self.docs_done, None)  # resume: skip consumed documents untokenised
            produced = False
            while True:
                chunk = [self._text(d) for d in itertools.islice(docs, self.tokenize_batch)]
                if not chunk:
                    break
                for ids in self._encode(chunk):
                    produced = True
                    self.docs_done += 1
                    if not self.pack:
                        yield ids + [self.pad_id] * (self.seq_len - len(ids))
                        continue
                    self.buffer.extend(ids)
                    while len(self.buffer) >= self.seq_len:
                        seq, self.buffer = self.buffer[:self.seq_len], self.buffer[self.seq_len:]
                        yield seq
            if not produced and self.docs_done == 0:
                raise EmptyDocumentsError(
                    f"{getattr(self.documents, 'description', 'the training documents')} hold no document")
            if produced and not self._epoch_has_text:
                raise EmptyDocumentsError(f"every {self.text_key!r} in {getattr(self.documents, 'description', 'the documents')} "
                                "is empty; there is nothing to train on")
            self._epoch_has_text = False
            self.epoch += 1
            self.docs_done = 0

    def next_batch(self, batch_size: int) -> dict:
        """``{"input_ids": (B, L) long, "labels": (B, L) long with -100 at padding}``."""
        if self._iter is None:
            self._iter = self._sequences()
        rows = [next(self._iter) for _ in range(int(batch_size))]
        input_ids = torch.tensor(rows, dtype=torch.long)  # (B, L)
        return {"input_ids": input_ids, "labels": labels_from(input_ids, None if self.pack else self.pad_id)}


def labels_from(input_ids: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """Labels = inputs with padding (``pad_id``; None for packed data) replaced by -100."""
    labels = input_ids.clone()
    if pad_id is not None:
        labels[input_ids == pad_id] = IGNORE_INDEX
    return labels


def eval_batches(documents: Iterable[dict], tokenizer, seq_len: int, batch_size: int, max_tokens: int,
                 text_key: str = "text", vocab_size: int | None = None, pack: bool = False) -> list[dict]:
    """The first ``max_tokens`` predicted (non-pad) tokens of ``documents`` as batches.

    Tokens count as label positions the loss sees (every non-pad token after the first of its
    sequence). The last sequence's labels are cut with -100 so the total is exactly
    ``max_tokens`` when the data holds that many; otherwise every document is used.
    """
    stream = TokenStream(lambda epoch: documents if epoch == 0 else [], tokenizer, seq_len, pack=pack,
                         text_key=text_key, vocab_size=vocab_size)
    seqs = stream._sequences()
    batches, rows, counted = [], [], 0
    while counted < max_tokens:
        try:
            ids = torch.tensor(next(seqs), dtype=torch.long)
        except StopIteration:
            break
        except EmptyDocumentsError:
            break  # the end of the (finite) evaluation documents
        labels = labels_from(ids, None if pack else stream.pad_id)
        labels[0] = IGNORE_INDEX  # never predicted (kept so the count matches what the loss sees)
        keep = int((labels != IGNORE_INDEX).sum())
        if counted + keep > max_tokens:  # cut the tail of the last sequence
            positions = (labels != IGNORE_INDEX).nonzero().flatten()
            labels[positions[max_tokens - counted:]] = IGNORE_INDEX
            keep = max_tokens - counted
        counted += keep
        rows.append((ids, labels))
        if len(rows) == batch_size:
            batches.append(_stack(rows))
            rows = []
    if rows:
        batches.append(_stack(rows))
    if counted == 0:
        where = getattr(documents, "description", "the evaluation documents")
        raise DataError(f"{where} hold no token to evaluate (every {text_key!r} is empty or the data is empty)")
    return batches


def _stack(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    return {"input_ids": torch.stack([r[0] for r in rows]), "labels": torch.stack([r[1] for r in rows])}


def epoch_documents(src: TextSource, split: str, shuffle_seed: int | None, shuffle_buffer: int, rank: int = 0,
                    world_size: int = 1) -> Callable[[int], Iterable[dict]]:
    """``epoch -> documents`` for ``TokenStream`` (the dataset is opened once, reshuffled per epoch)."""
    ds = open_documents(src, split, shuffle_seed, shuffle_buffer, rank, world_size)

    checked = CheckedDocuments(ds, src, split)

    def documents(epoch: int):
        ds.set_epoch(epoch)
        return checked

    documents.description = checked.description

    return documents
