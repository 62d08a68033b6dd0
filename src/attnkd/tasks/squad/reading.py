"""Extractive question answering on SQuAD v1.1 files: reading, windows, answers, and the official scores.

Pure functions, no model: `read_squad` turns a SQuAD-format JSON file (zipped or not) into one row
per question, refusing malformed input with a one-line error that names the file and question id;
`windows` cuts question + context into the overlapping windows a model reads, each with its
answer as token positions (or the `[CLS]` position 0 when the answer is not inside); `best_answer`
merges the windows' start/end scores back into one answer text per question; `exact_match` and
`f1` are the official v1.1 scores (Rajpurkar et al. 2016, the evaluation script's normalisation).
"""

from __future__ import annotations

import collections
import json
import re
import string
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from attnkd.errors import UserError

PUNCTUATION = frozenset(string.punctuation)


# ---------------------------------------------------------------------------- the official scores


def normalize_answer(text: str) -> str:
    """The v1.1 evaluation script's normalisation: lower case, no punctuation, no articles
    (a, an, the), single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: list[str]) -> float:
    """1.0 when the normalised prediction equals one of the normalised gold answers."""
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def f1(prediction: str, golds: list[str]) -> float:
    """Token-overlap F1 of the normalised prediction, the best over the gold answers."""
    p = normalize_answer(prediction).split()

    def one(gold: str) -> float:
        g = normalize_answer(gold).split()
        common = sum((collections.Counter(p) & collections.Counter(g)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(g)
        return 2 * precision * recall / (precision + recall)

    return max(one(g) for g in golds)


# ---------------------------------------------------------------------------- reading SQuAD JSON


@dataclass(frozen=True)
class Question:
    id: str
    title: str
    context: str
    question: str
    answers: list[dict] = field(default_factory=list)  # [{"text": str, "answer_start": int}], characters into context


def _load_json(path: Path) -> dict:
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                members = [n for n in z.namelist() if n.endswith(".json")]
                if len(members) != 1:
                    raise UserError(f"{path}: expected one .json member in the zip, found {len(members)}")
                raw = z.read(members[0])
        else:
            raw = path.read_bytes()
        return json.loads(raw)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not SQuAD JSON ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def read_squad(path: Path, require_answers: bool = True) -> list[Question]:
    """One row per question of a SQuAD v1.1 file, in file order.

    Refused, naming the file and the question id (or article and paragraph when there is none):
    not SQuAD JSON, a missing `data`/`paragraphs`/`context`/`qas`/`id`/`question`/`answers`, an empty
    context, an `answer_start` whose context slice is not the answer text, and, when
    `require_answers` (a training split), a question without answers.
    """
    path = Path(path)
    return parse_squad(_load_json(path), str(path), require_answers)


def parse_squad(doc, path: str, require_answers: bool = True) -> list[Question]:
    """`read_squad` on a SQuAD-format document already in memory; `path` names it in errors."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise UserError(f"{path}: not SQuAD JSON (no top-level 'data' list)")
    rows, seen = [], set()
    for a, article in enumerate(doc["data"]):
        title = str(article.get("title", f"article {a}"))
        if not isinstance(article.get("paragraphs"), list):
            raise UserError(f"{path}: article {title!r}: missing 'paragraphs'")
        for p, paragraph in enumerate(article["paragraphs"]):
            where = f"{path}: article {title!r}, paragraph {p}"
            for key in ("context", "qas"):
                if key not in paragraph:
                    raise UserError(f"{where}: missing '{key}'")
            context = paragraph["context"]
            if not isinstance(context, str) or not context.strip():
                raise UserError(f"{where}: empty context")
            for qa in paragraph["qas"]:
                qid = qa.get("id")
                if qid is None:
                    raise UserError(f"{where}: a question without 'id'")
                for key in ("question", "answers"):
                    if key not in qa:
                        raise UserError(f"{path}: question {qid}: missing '{key}'")
                if qid in seen:
                    raise UserError(f"{path}: question {qid}: id repeated")
                seen.add(qid)
                answers = qa["answers"]
                if require_answers and not answers:
                    raise UserError(f"{path}: question {qid}: no answers (a training split needs one)")
                for ans in answers:
                    start, text = ans.get("answer_start"), ans.get("text")
                    if not isinstance(start, int) or not isinstance(text, str):
                        raise UserError(f"{path}: question {qid}: an answer needs 'text' and an integer 'answer_start'")
                    if context[start : start + len(text)] != text:
                        raise UserError(f"{path}: question {qid}: answer_start {start} does not point at {text!r} "
                                        f"(the context there reads {context[start : start + len(text)]!r})")
                rows.append(Question(qid, title, context, qa["question"], [{"text": x["text"], "answer_start": x["answer_start"]} for x in answers]))
    return rows


# ---------------------------------------------------------------------------- windows and answers


@dataclass(frozen=True)
class Window:
    question: int  # index of its question in the rows given to `windows`
    input_ids: list[int]  # [CLS] question [SEP] context part [SEP]
    offsets: list[tuple[int, int] | None]  # per token: (start, end) characters into the context, None outside the context
    start: int  # answer start token, 0 ([CLS]) when the answer is not inside the window
    end: int
    type_ids: list[int] = field(default_factory=list)  # per token: 0 question part, 1 context part


def windows(tokenizer, rows: list[Question], max_length: int, stride: int) -> list[Window]:
    """Question + context windows of at most `max_length` tokens, consecutive ones overlapping by
    `stride` context tokens (HF's `return_overflowing_tokens`); the first gold answer mapped from
    characters to the window's tokens, or to [CLS] when it does not lie wholly inside."""
    out = []
    for q, row in enumerate(rows):
        enc = tokenizer(row.question, row.context, truncation="only_second", max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True)
        answer = row.answers[0] if row.answers else None
        for w in range(len(enc["input_ids"])):
            seq = enc.sequence_ids(w)
            offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][w], seq)]
            start = end = 0
            if answer is not None:
                a0, a1 = answer["answer_start"], answer["answer_start"] + len(answer["text"])
                inside = [i for i, o in enumerate(offsets) if o is not None]
                if offsets[inside[0]][0] <= a0 and a1 <= offsets[inside[-1]][1]:
                    start = next(i for i in inside if offsets[i][1] > a0)
                    end = next(i for i in reversed(inside) if offsets[i][0] < a1)
            out.append(Window(q, enc["input_ids"][w], offsets, start, end, enc["token_type_ids"][w]))
    return out


def best_answer(context: str, spans: list[tuple[np.ndarray, np.ndarray, list]], max_answer_tokens: int, top: int = 20) -> str:
    """The answer text of one question from its windows' scores: over every window and every
    (start, end) inside the context with start <= end < start + max_answer_tokens, among each
    window's `top` starts and ends, the highest start + end score (the usual n-best search of
    BERT's SQuAD code). spans: per window (start scores (T,), end scores (T,), offsets)."""
    best, text = -np.inf, ""
    for start_scores, end_scores, offsets in spans:
        n = len(offsets)
        starts = np.argsort(start_scores[:n])[::-1][:top]
        ends = np.argsort(end_scores[:n])[::-1][:top]
        for s in starts:
            if offsets[s] is None:
                continue
            for e in ends:
                if offsets[e] is None or e < s or e - s + 1 > max_answer_tokens:
                    continue
                score = start_scores[s] + end_scores[e]
                if score > best:
                    best, text = score, context[offsets[s][0] : offsets[e][1]]
    return text


# ---------------------------------------------------------------------------- splits and span rows


def hub_document(rows: list[dict]) -> dict:
    """Rows of the hub's `squad` (id, title, context, question, answers {text: [...],
    answer_start: [...]}) as a SQuAD-format document, one paragraph per distinct context, so that
    `parse_squad` checks them as it checks a file."""
    articles: dict[str, dict[str, list]] = {}
    for r in rows:
        answers = [{"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])]
        articles.setdefault(r["title"], {}).setdefault(r["context"], []).append({"id": r["id"], "question": r["question"], "answers": answers})
    return {"data": [{"title": t, "paragraphs": [{"context": c, "qas": qas} for c, qas in ps.items()]} for t, ps in articles.items()]}


def split_by_article(dev: list[Question], train: list[Question], test_questions: int, validation_questions: int,
                     seed: int) -> dict[str, list[Question]]:
    """Train, validation and test splits that never share an article (the questions of a paragraph
    share its context). The dev articles in an order drawn from `seed` fill the test split until it
    holds at least `test_questions` questions, then validation until `validation_questions`; the
    remaining dev articles join the training file's. The test split is not the official dev set."""
    by_title: dict[str, list[Question]] = {}
    for q in dev:
        by_title.setdefault(q.title, []).append(q)
    if len(dev) < test_questions + validation_questions:
        raise UserError(f"data: {test_questions} test and {validation_questions} validation questions asked, the dev file has {len(dev)}")
    titles = list(by_title)  # in file order
    order = [titles[i] for i in np.random.default_rng(seed).permutation(len(titles))]
    picked: dict[str, list[str]] = {"test": [], "validation": []}
    for split, target in (("test", test_questions), ("validation", validation_questions)):
        while sum(len(by_title[t]) for t in picked[split]) < target:
            picked[split].append(order.pop(0))
    rest = [q for t in order for q in by_title[t]]
    return {"train": train + rest, "validation": [q for t in picked["validation"] for q in by_title[t]],
            "test": [q for t in picked["test"] for q in by_title[t]]}


def span_rows(start_logits, end_logits, token_type_ids, attention_mask, fill: float = -1e4):
    """The view the losses read for span extraction: a start row and an end row per window, (2B, T),
    with the question and padding masked to `fill` and [CLS] (position 0, the no-answer position)
    kept, as TextBrewer's and HF's distillation examples do. start_logits, end_logits: (B, T);
    token_type_ids, attention_mask: (B, T), 1 on context tokens and on real tokens."""
    allowed = (token_type_ids.bool() & attention_mask.bool()).clone()  # context tokens and the final [SEP]
    allowed[torch.arange(len(allowed)), attention_mask.sum(1) - 1] = False  # not the final [SEP]
    allowed[:, 0] = True  # [CLS]
    rows = torch.stack([start_logits, end_logits], 1).masked_fill(~allowed[:, None, :], fill)  # (B, 2, T)
    return rows.flatten(0, 1)
