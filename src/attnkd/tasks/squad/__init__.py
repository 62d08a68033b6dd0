"""Extractive question answering (SQuAD v1.1): a start and an end token per window.

A feature is a window of question + context (`data.max_length` tokens, consecutive windows of one
question overlapping by `data.doc_stride` context tokens); its target is the answer's [start, end]
tokens, or [0, 0] ([CLS]) when the answer is not wholly inside. Raw outputs: `start_logits` and
`end_logits` (B, T), stored per token. View: a start row and an end row per window, (2B, T), with
the question and padding masked and [CLS] kept (`attnkd.tasks.squad.reading.span_rows`), so the registry's `ce`
is the span cross-entropy and `kd` span KD with T^2. Predictions are the windows' start and end
scores; an answer per question merges its windows (the best start + end within the context and
MAX_ANSWER_TOKENS); the scores are the official v1.1 exact match and F1, as fractions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from attnkd import data, sources
from attnkd.artifacts import PreparedMeta, SplitInfo
from attnkd.compute import CPU, Compute
from attnkd.data import Split
from attnkd.errors import UserError
from attnkd.io import sha256_file
from attnkd.models import load_tokenizer, resolve_init
from attnkd.params import DataParams, Params
from attnkd.tasks.squad.reading import Question, best_answer, exact_match, f1, hub_document, parse_squad, read_squad, span_rows, split_by_article, windows
from attnkd.tasks.base import EncoderTask, View, predict_rows

MAX_ANSWER_TOKENS = 30  # the longest answer a prediction may give (BERT's and HF's SQuAD default)
FILL = -1e4  # the score of a masked or padded position


def read_questions(dp: DataParams, root: Path) -> tuple[dict[str, list[Question]], dict[str, str]]:
    """The questions of the training file (answers required), the file test and validation are
    drawn from (`splits.test`: the official dev set; answers optional), and a validation file when
    `splits.validation` names one; and where each came from, as the params say it."""
    if dp.source == "bbc_news":
        raise UserError("params.yaml: data.source: bbc_news is not SQuAD data; task squad reads data.source: files (SQuAD JSON) or hub")
    if not dp.splits.test:
        raise UserError("params.yaml: data.splits.test: task squad needs the file (or hub split) its test and validation articles come from")
    if dp.source == "hub":
        return sources.read_hub_splits(dp, lambda ds, split, where: parse_squad(hub_document(ds.to_list()), where, require_answers=split == "train"))
    names = {k: v for k, v in dp.splits.model_dump().items() if v}
    folder = sources.resolve_dir(dp.dir, root)
    out = {split: read_squad(folder / name, require_answers=split == "train") for split, name in names.items()}
    return out, {k: f"{dp.dir}/{v}" for k, v in names.items()}


def offsets_column(offsets: list) -> np.ndarray:
    """(2n,) int32: per token its (start, end) characters into the context, (-1, -1) outside it."""
    return np.array([x for o in offsets for x in (o if o is not None else (-1, -1))], dtype=np.int32)


def offsets_of(column: np.ndarray) -> list:
    pairs = np.asarray(column).reshape(-1, 2)
    return [None if s < 0 else (int(s), int(e)) for s, e in pairs]


def window_frame(rows: list[Question], ws: list) -> pd.DataFrame:
    """A prepared split of windows: the standard columns (text: the question, text_pair: the
    context, label: [start, end]) and the task's own (question id, title, gold answers, offsets)."""
    return pd.DataFrame({
        "text": [rows[w.question].question for w in ws],
        "text_pair": [rows[w.question].context for w in ws],
        "label": [np.array([w.start, w.end], dtype=np.int64) for w in ws],
        "input_ids": [np.asarray(w.input_ids, dtype=np.int32) for w in ws],
        "token_type_ids": [np.asarray(w.type_ids, dtype=np.int8) for w in ws],
        "question_id": [rows[w.question].id for w in ws],
        "title": [rows[w.question].title for w in ws],
        "answers": [[a["text"] for a in rows[w.question].answers] for w in ws],
        "offsets": [offsets_column(w.offsets) for w in ws],
    })


def window_stats(rows: list[Question], ws: list) -> dict:
    lengths = np.array([len(w.input_ids) for w in ws])
    per_question = np.bincount([w.question for w in ws], minlength=len(rows))
    return {
        "questions": len(rows),
        "articles": len({q.title for q in rows}),
        "paragraphs": len({q.context for q in rows}),
        "windows": len(ws),
        "questions_with_several_windows": int((per_question > 1).sum()),
        "windows_without_the_answer": int(sum(w.start == 0 for w in ws)),
        "tokens_p50": int(np.percentile(lengths, 50)),
        "tokens_p95": int(np.percentile(lengths, 95)),
        "tokens_max": int(lengths.max()),
    }


def check_windows(dp: DataParams) -> None:
    """Windows must advance: the stride (context tokens shared by neighbours) below half the window."""
    if dp.doc_stride >= dp.max_length // 2:
        raise UserError(f"params.yaml: data.doc_stride: {dp.doc_stride} must be below half of data.max_length ({dp.max_length}), or windows barely advance")


class Squad(EncoderTask):
    name = "squad"
    select_by = "f1"
    summary_metrics = ("exact_match", "f1")
    outputs = {"start_logits": "token", "end_logits": "token"}
    quality = {"exact_match": "EM", "f1": "F1"}  # the report's quality columns
    short = "F1"  # select_by in the report's column names
    headline = {"em": "exact_match", "f1": "f1"}  # the DVC metrics per row

    def model_class(self) -> type:
        from transformers import BertForQuestionAnswering  # here, not at the top: a stage that builds no model skips its import

        return BertForQuestionAnswering

    def prepare(self, params: Params, root: Path, out: Path) -> tuple[PreparedMeta, dict]:
        """SQuAD files (or the hub's squad) to windows: test and validation are whole articles of the
        splits.test file (`split_by_article`), train the training file and the rest; one row per
        window with its question id, gold answers, context and token offsets."""
        dp = params.data
        check_windows(dp)
        read, origin = read_questions(dp, root)
        given_validation = "validation" in read
        splits = split_by_article(read["test"], read["train"], dp.test_questions, 0 if given_validation else dp.validation_questions, params.seed)
        if given_validation:
            splits["validation"] = read["validation"]
        for q in splits["train"]:
            if not q.answers:
                raise UserError(f"{origin['test']}: question {q.id}: no answers, and its article is in the training split (a training split needs one)")
        if dp.train_questions and dp.train_questions < len(splits["train"]):  # a sample drawn with the seed, in file order
            keep = np.sort(np.random.default_rng(params.seed).choice(len(splits["train"]), dp.train_questions, replace=False))
            splits["train"] = [splits["train"][i] for i in keep]
        tokenizer = load_tokenizer(resolve_init(params.teacher.init))
        report = {"source": dp.source, "task": "extractive QA (question + context windows)", "max_length": dp.max_length, "doc_stride": dp.doc_stride,
                  "max_answer_tokens": MAX_ANSWER_TOKENS, "splits": {}}
        infos = {}
        for name, rows in splits.items():
            ws = windows(tokenizer, rows, dp.max_length, dp.doc_stride)
            window_frame(rows, ws).to_parquet(out / f"{name}.parquet", index=False)
            infos[name] = SplitInfo(examples=len(ws), inputs_sha256=data.ids_digest([w.input_ids for w in ws]), sha256=sha256_file(out / f"{name}.parquet"))
            where = {"train": f"{origin['train']} + the other articles of {origin['test']}", "test": f"articles of {origin['test']} (seed {params.seed})",
                     "validation": origin.get("validation", f"articles of {origin['test']} (seed {params.seed})")}[name]
            report["splits"][name] = {"from": where, "examples": len(ws), **window_stats(rows, ws)}
        report["splits"]["test"]["article_titles"] = sorted({q.title for q in splits["test"]})
        report["splits"]["validation"]["article_titles"] = sorted({q.title for q in splits["validation"]})
        meta = PreparedMeta(label_names=[], max_length=dp.max_length, source=dp.source, pair=True, tokenizer=params.teacher.init, splits=infos)
        meta.write(out)
        return meta, report

    def head_config(self, meta: PreparedMeta) -> dict:
        return {"num_labels": 2}  # BertForQuestionAnswering: a start and an end score per token

    def view(self, raw: dict[str, torch.Tensor], batch: dict) -> View:
        return {"logits": span_rows(raw["start_logits"], raw["end_logits"], batch["token_type_ids"], batch["attention_mask"], FILL)}  # (2B, T)

    def targets(self, batch: dict) -> View:
        return {"labels": batch["labels"].flatten()}  # (B, 2) -> (2B,): start, end of each window

    def predict(self, model, split: Split, batch_size: int, pad_id: int, compute: Compute = CPU) -> np.ndarray:
        """(N, 2 L) per window: its start scores then its end scores, L = the split's longest
        window, masked and padded positions at FILL."""
        width = int(split.lengths.max())

        def score(out, b):
            rows = self.view({"start_logits": out.start_logits, "end_logits": out.end_logits}, b)["logits"].view(len(b["input_ids"]), 2, -1)  # (B, 2, T)
            return torch.nn.functional.pad(rows, (0, width - rows.shape[-1]), value=FILL).flatten(1)  # (B, 2 L)

        return predict_rows(model, split, batch_size, pad_id, 2 * width, score, compute)

    def answers(self, split: Split, predictions: np.ndarray) -> pd.DataFrame:
        """One row per question (in split order): id, title, question, gold answers, the predicted
        answer merged over its windows, and its exact match and F1."""
        scores = predictions.reshape(len(split), 2, -1)
        ex = split.extra
        by_question: dict[str, list[int]] = {}
        for i, qid in enumerate(ex["question_id"]):
            by_question.setdefault(qid, []).append(i)
        rows = []
        for qid, idx in by_question.items():
            first = idx[0]
            spans = [(scores[i, 0], scores[i, 1], offsets_of(ex["offsets"][i])) for i in idx]
            predicted = best_answer(ex["text_pair"][first], spans, MAX_ANSWER_TOKENS)
            golds = list(ex["answers"][first])
            rows.append({"id": qid, "title": ex["title"][first], "question": ex["text"][first], "gold": json.dumps(golds, ensure_ascii=False),
                         "predicted": predicted, "exact_match": exact_match(predicted, golds), "f1": round(f1(predicted, golds), 6)})
        return pd.DataFrame(rows)

    def metrics(self, split: Split, predictions: np.ndarray) -> dict[str, float]:
        frame = self.answers(split, predictions)
        return {"exact_match": float(frame["exact_match"].mean()), "f1": float(frame["f1"].mean())}

    def caption(self, split: Split, i: int, meta: PreparedMeta) -> str:
        answers = json.dumps(list(split.extra["answers"][i])[:1], ensure_ascii=False)
        return f"question {split.extra['question_id'][i]}, answer {answers}"

    def evaluation(self, split: Split, predictions: np.ndarray, meta: PreparedMeta, bins: int) -> tuple[dict, str]:
        """Exact match and F1 over the test questions, and one row per question."""
        frame = self.answers(split, predictions)
        quality = {"exact_match": round(float(frame["exact_match"].mean()), 6), "f1": round(float(frame["f1"].mean()), 6), "questions": len(frame)}
        return quality, frame.to_csv(index=False)

    def quality_note(self, params: Params) -> str:
        """What the report says of the quality columns, under the table."""
        return "EM and F1: the official SQuAD v1.1 exact match and token F1 (fractions), the best over a question's gold answers. "

    def per_example(self, frame: pd.DataFrame) -> np.ndarray:
        """The paired tests' per-example score from a predictions CSV: each question's F1."""
        return frame["f1"].to_numpy(dtype=np.float64)

    def data_table(self, report: dict) -> tuple[pd.DataFrame, str]:
        """The data report as a table (a row per split) and a note."""
        splits = {name: report["splits"][name] for name in data.SPLITS}
        keys = ("articles", "paragraphs", "questions", "windows", "questions_with_several_windows", "windows_without_the_answer", "tokens_p50", "tokens_p95", "tokens_max")
        rows = [{"split": name, **{k.replace("_", " "): s[k] for k in keys}} for name, s in splits.items()]
        sources_ = "; ".join(f"{k}: {s['from']}" for k, s in splits.items())
        note = (f"Task: {report['task']}; windows of {report['max_length']} tokens overlapping by {report['doc_stride']} context tokens, "
                f"answers up to {report['max_answer_tokens']} tokens. Sources: {sources_}. The test split is whole articles of the official "
                f"dev set, not the official dev set: {', '.join(report['splits']['test']['article_titles'])}.")
        return pd.DataFrame(rows), note

    def examples(self, frames: dict[str, pd.DataFrame], k: int) -> pd.DataFrame:
        """The first k test questions: gold answers and each model's answer."""
        first = next(iter(frames.values())).head(k)
        out = pd.DataFrame({"question": first["question"], "gold": [" / ".join(dict.fromkeys(json.loads(g))) for g in first["gold"]]})
        for name, frame in frames.items():
            out[name] = frame["predicted"].head(k).fillna("").to_numpy()
        return out


TASK = Squad()
