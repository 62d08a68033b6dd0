"""Named-entity recognition (CoNLL-2003): a tag distribution per word.

A feature is a window of one sentence's words ([CLS] sub-tokens [SEP], at most `data.max_length`
positions; a longer sentence is cut into consecutive windows of whole words, counted in the data
report). Its labels are one tag id per position: a word's tag on its first sub-token and IGNORE
elsewhere (`data.label_subtokens: first`, the default: BERT's recipe, and every word then weighs
the same in the loss as it does in the score), or on every sub-token (`all`). Raw output:
`logits` (B, T, C), stored per token and class (a "token_classes" output). View: the rows of the
labelled positions, (R, C), so the registry's `ce` is the per-word cross-entropy and `kd` the
per-word KL at temperature T with T^2; [CLS], [SEP], later sub-tokens and padding add nothing.
Predictions are the argmax tag per position; a sentence's words take the tag predicted at their
first sub-token, its windows joined in order; the scores are conlleval's entity-level micro F1
over exact spans (precision, recall, per type) and the word accuracy.
"""

from __future__ import annotations

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
from attnkd.tasks.base import EncoderTask, View, class_head, predict_rows
from attnkd.tasks.ner.conll import (IGNORE, Read, Sentence, check_tags, entities, f1_of, per_type, read_conll, repair_iob2, span_counts,
                                    tag_names, windows)


def hub_sentences(ds, where: str) -> Read:
    """A hub split of `tokens` and integer `ner_tags` (with ClassLabel names), as sentences."""
    try:
        names = ds.features["ner_tags"].feature.names
    except (KeyError, AttributeError):
        raise UserError(f"{where}: expected columns `tokens` and `ner_tags` (a sequence of class labels)") from None
    out, repaired = [], 0
    for i, row in enumerate(ds):
        tags, n = repair_iob2([names[t] for t in row["ner_tags"]])
        repaired += n
        if row["tokens"]:
            out.append(Sentence(list(row["tokens"]), tags, f"{where}:row {i}"))
    return Read(out, 0, repaired)


def read_splits(dp: DataParams, root: Path) -> tuple[dict[str, Read], dict[str, str]]:
    """The tagged sentences of each named split, and where each came from, as the params say it."""
    if dp.source == "hub":
        return sources.read_hub_splits(dp, lambda ds, split, where: hub_sentences(ds, where))
    names = {k: v for k, v in dp.splits.model_dump().items() if v}
    folder = sources.resolve_dir(dp.dir, root)
    return ({split: read_conll(folder / name, f"{dp.dir}/{name}") for split, name in names.items()},
            {k: f"{dp.dir}/{v}" for k, v in names.items()})


def carve(sentences: list[Sentence], fraction: float, seed: int) -> tuple[list[Sentence], list[Sentence]]:
    """(kept, carved): `fraction` of the sentences drawn with the seed; both in file order."""
    n = max(1, round(fraction * len(sentences)))
    carved = set(np.random.default_rng(seed).choice(len(sentences), n, replace=False).tolist())
    return [s for i, s in enumerate(sentences) if i not in carved], [s for i, s in enumerate(sentences) if i in carved]


def complete(read: dict[str, Read], dp: DataParams, seed: int) -> tuple[dict[str, list[Sentence]], list[str]]:
    """train, validation and test sentences: the evaluation splits the params do not name carved
    from train (data.test_fraction, data.val_fraction, drawn with the seed); the training split cut to
    data.train_sentences drawn with the seed (0: all). Returns them and the carved names."""
    train, carved = read["train"].sentences, []
    splits = {}
    for name, fraction in (("test", dp.test_fraction), ("validation", dp.val_fraction)):
        if name in read:
            splits[name] = read[name].sentences
        else:
            train, splits[name] = carve(train, fraction, seed)
            carved.append(name)
    if dp.train_sentences and dp.train_sentences < len(train):
        keep = np.sort(np.random.default_rng(seed).choice(len(train), dp.train_sentences, replace=False))
        train = [train[i] for i in keep]
    return {"train": train, "validation": splits["validation"], "test": splits["test"]}, carved


def window_frame(sentences: list[Sentence], ws: list, max_length: int) -> pd.DataFrame:
    """A prepared split of windows: the standard columns (text: the window's words joined by
    spaces; label: (max_length,) tag ids, IGNORE-padded) and the task's own (sentence, first
    word, words, gold tags, word starts)."""
    def padded(labels: list[int]) -> np.ndarray:
        out = np.full(max_length, IGNORE, dtype=np.int64)
        out[: len(labels)] = labels
        return out

    words = [sentences[w.sentence].words[w.first_word : w.first_word + len(w.word_starts)] for w in ws]
    return pd.DataFrame({
        "text": [" ".join(x) for x in words],
        "text_pair": "",
        "label": [padded(w.labels) for w in ws],
        "input_ids": [np.asarray(w.input_ids, dtype=np.int32) for w in ws],
        "token_type_ids": [np.zeros(len(w.input_ids), dtype=np.int8) for w in ws],
        "sentence": np.array([w.sentence for w in ws], dtype=np.int64),
        "words": words,
        "tags": [sentences[w.sentence].tags[w.first_word : w.first_word + len(w.word_starts)] for w in ws],
        "word_starts": [np.asarray(w.word_starts, dtype=np.int32) for w in ws],
    })


def split_stats(sentences: list[Sentence], ws: list, read: Read | None) -> dict:
    lengths = np.array([len(w.input_ids) for w in ws])
    per_sentence = np.bincount([w.sentence for w in ws], minlength=len(sentences))
    spans = [e for s in sentences for e in entities(s.tags)]
    types = sorted({t for t, _, _ in spans})
    return {
        "sentences": len(sentences),
        "documents": read.documents if read else 0,
        "words": sum(len(s.words) for s in sentences),
        "entities": len(spans),
        "entities_by_type": {t: sum(1 for e in spans if e[0] == t) for t in types},
        "windows": len(ws),
        "sentences_in_several_windows": int((per_sentence > 1).sum()),
        "words_cut_to_one_window": int(sum(w.truncated_words for w in ws)),
        "iob2_repaired_tags": read.repaired if read else 0,
        "tokens_p50": int(np.percentile(lengths, 50)),
        "tokens_p95": int(np.percentile(lengths, 95)),
        "tokens_max": int(lengths.max()),
    }


def marked(words: list[str], tags: list[str]) -> str:
    """A sentence with its entities bracketed: `[PER John Smith] visited [LOC Paris]`."""
    starts = {s: (t, e) for t, s, e in entities(tags)}
    out, i = [], 0
    while i < len(words):
        if i in starts:
            kind, end = starts[i]
            out.append(f"[{kind} {' '.join(words[i : end + 1])}]")
            i = end + 1
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)


class Ner(EncoderTask):
    name = "ner"
    select_by = "f1"
    summary_metrics = ("f1", "precision", "recall", "token_accuracy")
    outputs = {"logits": "token_classes"}
    quality = {"f1": "entity F1", "precision": "P", "recall": "R", "token_accuracy": "token acc"}  # the report's quality columns
    short = "F1"  # select_by in the report's column names
    headline = {"f1": "f1"}  # the DVC metrics per row
    tag_names: list[str] | None = None  # the prepared tag set (bind)
    per_class_heading = "Per entity type (F1, mean over seeds; precision and recall per type are in reports/metrics/)"
    examples_note = ("The first test sentences with three entities or more: gold, the teacher's and each method's first-seed "
                     "student's entities, bracketed with their type.")

    def model_class(self) -> type:
        from transformers import BertForTokenClassification  # here, not at the top: a stage that builds no model skips its import

        return BertForTokenClassification

    def prepare(self, params: Params, root: Path, out: Path) -> tuple[PreparedMeta, dict]:
        """CoNLL files (or the hub's conll2003) to windows of words with a tag per first sub-token;
        test and validation are the files data.splits names (carved from train when not named)."""
        dp = params.data
        if dp.source == "bbc_news":
            raise UserError("params.yaml: data.source: bbc_news is not tagged data; task ner reads data.source: files (CoNLL columns) or hub")
        read, origin = read_splits(dp, root)
        splits, carved = complete(read, dp, params.seed)
        names = tag_names(splits["train"])
        if len(names) < 3:
            raise UserError(f"{origin['train']}: no entity tags (only O); task ner needs tagged entities to learn")
        for name in ("validation", "test"):
            check_tags(splits[name], names, origin.get(name, origin["train"]))
        tokenizer = load_tokenizer(resolve_init(params.teacher.init))
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(f"teacher.init: {params.teacher.init}: task ner aligns words to sub-tokens with a fast tokenizer (tokenizer.json)")
        report = {"source": dp.source, "task": "named-entity recognition (a tag per word)", "max_length": dp.max_length,
                  "label_subtokens": dp.label_subtokens, "tags": names, "carved_from_train": carved, "splits": {}}
        infos = {}
        for name, sentences in splits.items():
            ws = windows(tokenizer, sentences, names, dp.max_length, dp.label_subtokens)
            window_frame(sentences, ws, dp.max_length).to_parquet(out / f"{name}.parquet", index=False)
            infos[name] = SplitInfo(examples=len(ws), inputs_sha256=data.ids_digest([w.input_ids for w in ws]), sha256=sha256_file(out / f"{name}.parquet"))
            where = origin[name] if name in origin else f"carved from {origin['train']} (seed {params.seed})"
            if name == "train" and dp.train_sentences:
                where += f", {len(sentences)} sentences drawn with seed {params.seed}"
            report["splits"][name] = {"from": where, "examples": len(ws), **split_stats(sentences, ws, read.get(name))}
        meta = PreparedMeta(label_names=names, max_length=dp.max_length, source=dp.source, pair=False, tokenizer=params.teacher.init, splits=infos)
        meta.write(out)
        return meta, report

    def head_config(self, meta: PreparedMeta) -> dict:
        return class_head(meta)

    def collate(self, split: Split, idx: np.ndarray, pad_id: int) -> dict:
        """A padded batch; labels (B, T), cut from the stored (B, max_length) to the batch's length."""
        batch = data.collate(split, idx, pad_id)
        return batch | {"labels": batch["labels"][:, : batch["input_ids"].shape[1]]}

    def view(self, raw: dict[str, torch.Tensor], batch: dict) -> View:
        labelled = batch["labels"][:, : raw["logits"].shape[1]] >= 0  # (B, T)
        return {"logits": raw["logits"][labelled]}  # (B, T, C) -> (R, C): the labelled positions

    def targets(self, batch: dict) -> View:
        labels = batch["labels"]
        return {"labels": labels[labels >= 0]}  # (R,)

    def predict(self, model, split: Split, batch_size: int, pad_id: int, compute: Compute = CPU) -> np.ndarray:
        """(N, L) the argmax tag id per position, L = max_length, -1 past a window's end."""
        width = split.labels.shape[1]

        def score(out, b):
            tags = out.logits.argmax(-1)  # (B, T)
            return torch.nn.functional.pad(tags, (0, width - tags.shape[1]), value=-1)  # (B, L)

        return predict_rows(model, split, batch_size, pad_id, width, score, compute)

    def sentences(self, split: Split, predictions: np.ndarray, names: list[str]) -> pd.DataFrame:
        """One row per sentence (in split order): words, gold tags, predicted tags (each word's
        tag at its first sub-token, the sentence's windows joined) and its span counts."""
        ex = split.extra
        rows: dict[int, dict] = {}
        for i, s in enumerate(ex["sentence"]):
            row = rows.setdefault(int(s), {"words": [], "gold": [], "predicted": []})
            row["words"] += list(ex["words"][i])
            row["gold"] += list(ex["tags"][i])
            row["predicted"] += [names[int(t)] for t in predictions[i, np.asarray(ex["word_starts"][i], dtype=np.int64)]]
        return pd.DataFrame([{"sentence": s, "words": " ".join(r["words"]), "gold": " ".join(r["gold"]), "predicted": " ".join(r["predicted"]),
                               **dict(zip(("tp", "fp", "fn"), span_counts(r["gold"], r["predicted"])))} for s, r in rows.items()])

    def _scores(self, frame: pd.DataFrame) -> dict[str, float]:
        tp, fp, fn = (int(frame[k].sum()) for k in ("tp", "fp", "fn"))
        gold, pred = frame["gold"].str.split(), frame["predicted"].str.split()
        words = sum(len(g) for g in gold)
        right = sum(int(a == b) for g, p in zip(gold, pred) for a, b in zip(g, p))
        return {"f1": float(f1_of(np.array([tp, fp, fn]))), "precision": tp / (tp + fp) if tp + fp else 0.0,
                "recall": tp / (tp + fn) if tp + fn else 0.0, "token_accuracy": right / words if words else 0.0}

    def metrics(self, split: Split, predictions: np.ndarray) -> dict[str, float]:
        if self.tag_names is None:
            raise RuntimeError("Ner.bind(prepared) first: predictions are tag ids of the prepared tag set")
        return self._scores(self.sentences(split, predictions, self.tag_names))

    def bind(self, prepared: Path):
        """The task with the prepared tag set (predictions are read as its tag ids)."""
        bound = Ner()
        bound.tag_names = data.load_meta(prepared).label_names
        return bound

    def evaluation(self, split: Split, predictions: np.ndarray, meta: PreparedMeta, bins: int) -> tuple[dict, str]:
        """Entity F1, precision, recall (conlleval's), token accuracy and per-type scores over the
        test sentences, and one row per sentence."""
        frame = self.sentences(split, predictions, meta.label_names)
        scores = {k: round(v, 6) for k, v in self._scores(frame).items()}
        gold, pred = frame["gold"].str.split().tolist(), frame["predicted"].str.split().tolist()
        quality = scores | {"per_class": per_type(gold, pred), "sentences": len(frame), "entities": int(frame["tp"].sum() + frame["fn"].sum())}
        return quality, frame.to_csv(index=False)

    def quality_note(self, params: Params) -> str:
        return ("Entity F1, P, R: conlleval's entity-level micro scores over exact spans (a span counts with the same first and last "
                "word and the same type); token acc: the share of words whose tag is right. Δ, interval and p are in entity-F1 points: "
                "each resample of seeds and test sentences is scored by its summed true positives, false positives and false negatives "
                "(a corpus F1). ")

    def per_example(self, frame: pd.DataFrame) -> np.ndarray:
        """The paired test's per-sentence statistics, (N, 3): true positives, false positives, false negatives."""
        return frame[["tp", "fp", "fn"]].to_numpy(dtype=np.float64)

    @staticmethod
    def corpus_statistic(stats: np.ndarray) -> np.ndarray:
        """Entity micro F1 of summed counts (..., 3)."""
        return f1_of(stats)

    def caption(self, split: Split, i: int, meta: PreparedMeta) -> str:
        spans = sorted(entities(list(split.extra["tags"][i])), key=lambda e: e[1])
        words = list(split.extra["words"][i])
        return "entities: " + (", ".join(f"{' '.join(words[s : e + 1])} ({t})" for t, s, e in spans) or "none")

    def data_table(self, report: dict) -> tuple[pd.DataFrame, str]:
        keys = ("documents", "sentences", "words", "entities", "windows", "sentences_in_several_windows", "iob2_repaired_tags", "tokens_p50",
                "tokens_p95", "tokens_max")
        rows = [{"split": name, **{k.replace("_", " "): report["splits"][name][k] for k in keys},
                 **{t: n for t, n in report["splits"][name]["entities_by_type"].items()}} for name in data.SPLITS]
        froms = "; ".join(f"{k}: {report['splits'][k]['from']}" for k in data.SPLITS)
        labelled = "its first sub-token" if report["label_subtokens"] == "first" else "every sub-token"
        note = (f"Task: {report['task']}; windows of at most {report['max_length']} sub-tokens of whole words (a longer sentence is cut into "
                f"consecutive windows, counted above), each word's tag on {labelled}; tags: {', '.join(report['tags'])}. Sources: {froms}. "
                "I- tags that open an entity are read as B- (IOB2 repair; conlleval reads them so too).")
        return pd.DataFrame(rows).fillna(0), note

    def examples(self, frames: dict[str, pd.DataFrame], k: int) -> pd.DataFrame:
        """The first k test sentences with three or more gold entities: gold and each model's entities bracketed."""
        first = next(iter(frames.values()))
        rich = [i for i, g in enumerate(first["gold"]) if len(entities(g.split())) >= 3][:k]
        words = [first["words"].iloc[i].split() for i in rich]
        out = pd.DataFrame({"gold": [marked(w, first["gold"].iloc[i].split()) for w, i in zip(words, rich)]})
        for name, frame in frames.items():
            out[name] = [marked(w, frame["predicted"].iloc[i].split()) for w, i in zip(words, rich)]
        return out


TASK = Ner()
