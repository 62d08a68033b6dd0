"""CoNLL-2003 style data: reading tagged sentences, aligning words to sub-tokens, windows, and
entity-level scores.

File format (the shared task's, without its POS and chunk columns): one `TOKEN TAG` per line (the
tag is the last whitespace-separated field), a blank line between sentences, `-DOCSTART-` lines
between documents. Tags are IOB2 over entity types (`B-PER`, `I-PER`, ..., `O`). An `I-X` that
does not continue an entity of type X (after `O`, at the start of a sentence, or after another
type) is repaired to `B-X` and counted: `conlleval` (and seqeval's default mode) reads such a tag as
the start of an entity, so the repair changes no score; it makes IOB1 files (the original release's
encoding) read as IOB2.

Entity scores are those of `conlleval`: exact spans of the same type, micro-averaged. They come
from seqeval's span extraction (`get_entities`, its default, conlleval-compatible mode), per
sentence as (true positives, false positives, false negatives), so that a resample of sentences
is scored by its summed counts (a corpus F1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnkd.errors import UserError

TAG = re.compile(r"^(O|[BI]-[^\s]+)$")
DOCSTART = "-DOCSTART-"
IGNORE = -100  # the label of a position no loss or score reads ([CLS], [SEP], a word's later sub-tokens, padding)


@dataclass(frozen=True)
class Sentence:
    words: list[str]
    tags: list[str]
    where: str  # "file:line" of its first word


@dataclass(frozen=True)
class Read:
    sentences: list[Sentence]
    documents: int
    repaired: int  # I- tags made B- (IOB2 repair)


def repair_iob2(tags: list[str]) -> tuple[list[str], int]:
    """I-X that does not continue an X entity becomes B-X; returns the tags and how many changed."""
    out, changed = [], 0
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and (i == 0 or out[i - 1][2:] != tag[2:]):
            tag, changed = "B-" + tag[2:], changed + 1
        out.append(tag)
    return out, changed


def parse_conll(text: str, where: str) -> Read:
    """Sentences of a CoNLL column text; a bad line stops it naming `where` and the line."""
    sentences, words, tags, start, documents, repaired = [], [], [], 0, 0, 0

    def close() -> None:
        nonlocal words, tags, repaired
        if words:
            fixed, n = repair_iob2(tags)
            sentences.append(Sentence(words, fixed, f"{where}:{start}"))
            repaired += n
        words, tags = [], []

    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            close()
            continue
        if fields[0] == DOCSTART:
            close()
            documents += 1
            continue
        if len(fields) < 2:
            raise UserError(f"{where}: line {number}: {line.strip()!r} has no tag (expected `TOKEN TAG`)")
        if not TAG.match(fields[-1]):
            raise UserError(f"{where}: line {number}: tag {fields[-1]!r} is not an IOB2 tag (O, B-<type> or I-<type>)")
        if not words:
            start = number
        words.append(fields[0])
        tags.append(fields[-1])
    close()  # a last sentence without a trailing blank line
    return Read(sentences, documents, repaired)


def read_conll(path: Path, shown: str) -> Read:
    """A CoNLL file (strict UTF-8); `shown`: how errors name it."""
    if not path.is_file():
        raise UserError(f"{shown}: file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(f"{shown}: line {line}: not UTF-8 (byte {raw[err.start]:#04x}); re-encode the file as UTF-8") from None
    read = parse_conll(text, shown)
    if not read.sentences:
        raise UserError(f"{shown}: no tagged sentences")
    return read


def tag_names(sentences: list[Sentence]) -> list[str]:
    """The tag set of training sentences: O, then B- and I- of every entity type in sorted order
    (both prefixes of a type, so a type seen only as B- can still be continued)."""
    types = sorted({t[2:] for s in sentences for t in s.tags if t != "O"})
    return ["O", *(f"{p}-{t}" for t in types for p in "BI")]


def check_tags(sentences: list[Sentence], names: list[str], shown: str) -> None:
    """Every tag of an evaluation file must be one the training data defines."""
    known = set(names)
    for s in sentences:
        for i, tag in enumerate(s.tags):
            if tag not in known:
                raise UserError(f"{shown}: sentence at line {s.where.rsplit(':', 1)[1]}, word {i + 1} {s.words[i]!r}: "
                                f"tag {tag!r} does not occur in the training data (tags: {', '.join(names)})")


@dataclass(frozen=True)
class Window:
    sentence: int  # index of its sentence in the split
    first_word: int  # the sentence's index of its first word
    input_ids: list[int]  # [CLS] sub-tokens [SEP]
    labels: list[int]  # per position: a tag id, or IGNORE
    word_starts: list[int]  # per word of the window: the position of its first sub-token
    truncated_words: int  # words cut to fit one window alone


def word_pieces(tokenizer, words: list[str]) -> list[list[int]]:
    """Per word, its sub-token ids (the tokenizer's pre-tokenisation within a word included: a
    hyphenated word is several pieces of one word)."""
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    pieces: list[list[int]] = [[] for _ in words]
    for token, word in zip(enc["input_ids"], enc.word_ids()):
        pieces[word].append(int(token))
    unk = tokenizer.unk_token_id
    return [p or [unk] for p in pieces]  # a word the tokenizer drops (a control character) keeps one position


def align(tokenizer, pieces: list[list[int]], tags: list[int], later: dict[int, int] | None) -> tuple[list[int], list[int], list[int]]:
    """(input_ids, labels, word_starts) of one window of words: each word's tag on its first
    sub-token; its later sub-tokens IGNORE (`later` None), or labelled `later.get(tag, tag)` (a
    B-X word's later pieces I-X, so a span stays one entity)."""
    ids, labels, starts = [tokenizer.cls_token_id], [IGNORE], []
    for p, tag in zip(pieces, tags):
        starts.append(len(ids))
        ids += p
        labels += [tag] + [IGNORE if later is None else later.get(tag, tag)] * (len(p) - 1)
    ids.append(tokenizer.sep_token_id)
    labels.append(IGNORE)
    return ids, labels, starts


def continuation(names: list[str]) -> dict[int, int]:
    """Tag id of B-X -> tag id of I-X."""
    ids = {n: i for i, n in enumerate(names)}
    return {ids[n]: ids["I-" + n[2:]] for n in names if n.startswith("B-") and "I-" + n[2:] in ids}


def windows(tokenizer, sentences: list[Sentence], names: list[str], max_length: int, label_subtokens: str) -> list[Window]:
    """Every sentence as one window, or as consecutive windows of whole words when its sub-tokens
    (with [CLS] and [SEP]) pass max_length; a single word longer than a window keeps its first
    pieces. label_subtokens: "first" (a word's tag on its first sub-token only) or "all"."""
    ids_of = {n: i for i, n in enumerate(names)}
    later = continuation(names) if label_subtokens == "all" else None
    room = max_length - 2
    out = []
    for si, s in enumerate(sentences):
        pieces = word_pieces(tokenizer, s.words)
        cut = sum(len(p) > room for p in pieces)
        pieces = [p[:room] for p in pieces]
        tags = [ids_of[t] for t in s.tags]
        first = 0
        while first < len(pieces):
            last, used = first, 0
            while last < len(pieces) and used + len(pieces[last]) <= room:
                used += len(pieces[last])
                last += 1
            ids, labels, starts = align(tokenizer, pieces[first:last], tags[first:last], later)
            out.append(Window(si, first, ids, labels, starts, cut if first == 0 else 0))
            first = last
    return out


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """The (type, first word, last word) spans of a tag sequence, as conlleval reads them."""
    from seqeval.metrics.sequence_labeling import get_entities

    return set(get_entities(list(tags)))


def span_counts(gold: list[str], predicted: list[str]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one sentence: a predicted span counts
    only with the same first and last word and the same type as a gold span."""
    g, p = entities(gold), entities(predicted)
    hit = len(g & p)
    return hit, len(p) - hit, len(g) - hit


def f1_of(counts: np.ndarray) -> np.ndarray:
    """Micro F1 of summed (tp, fp, fn) counts (..., 3): 2 tp / (2 tp + fp + fn), 0 when all are 0."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros(np.shape(tp), dtype=np.float64), where=denominator > 0)


def per_type(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per entity type (seqeval's report, conlleval's numbers)."""
    from seqeval.metrics import classification_report

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    return {k: {"precision": round(float(v["precision"]), 6), "recall": round(float(v["recall"]), 6), "f1": round(float(v["f1-score"]), 6),
                "support": int(v["support"])} for k, v in report.items() if " avg" not in k}
