"""Machine translation: a target sentence per source sentence, scored by sacreBLEU.

A feature is a sentence pair: `input_ids` the source's subword ids then </s>, and the task's own
column `target_ids` the target's then </s> (both cut at `data.max_length`), over one joint
byte-level BPE vocabulary that prepare trains on the training split and saves in the prepared
data (`tokenizer/`, a Hugging Face tokenizer dir every model then carries). The teacher is an
encoder-decoder built from `teacher.seq2seq` and trained from scratch (attnkd.tasks.translation.model) with
label-smoothed cross-entropy. Raw output: `logits` (B, m, V) under teacher forcing; view: one row
per real target position, (R, V) (a stored teacher's: its top-k ids and log-probabilities, (R, k)),
and targets the gold token of each, so the registry's `ce` and `kd` are word-level. Predictions
are greedy translations (evaluate: `evaluate.beam`); validation picks the epoch by corpus chrF;
evaluation reports sacreBLEU's BLEU and chrF with their signatures, and per sentence chrF and
sentence BLEU; the report's paired test resamples sentences' BLEU statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from attnkd import data, sources
from attnkd.artifacts import PreparedMeta, SignalManifest, SplitInfo
from attnkd.compute import CPU, Compute
from attnkd.data import Split
from attnkd.errors import UserError
from attnkd.io import sha256_file
from attnkd.losses import SEQ2SEQ_MAPS
from attnkd.params import Params
from attnkd.tasks.translation.model import Architecture, build_model, collate_pairs, cut, forward, label_smoothed_ce, translate
from attnkd.tasks.base import TaskBase, View
from attnkd.tasks.translation import hooks
from attnkd.tasks.translation.text import BOS, EOS, PAD, UNK, Parallel, bleu_from_stats, bleu_stats, read_hub_parallel, read_parallel, score, train_tokenizer

TOKENIZER_DIR = "tokenizer"  # in the prepared data: the joint vocabulary


def save_tokenizer(tok, out: Path) -> None:
    """A `tokenizers.Tokenizer` as a Hugging Face tokenizer dir (AutoTokenizer loads it; models save it beside their weights)."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK).save_pretrained(str(out))


def carve(pairs: Parallel, fraction: float, seed: int) -> tuple[Parallel, Parallel]:
    """A seeded share of the pairs (in file order) as a new split, and the rest."""
    rng = np.random.default_rng(seed)
    taken = np.zeros(len(pairs), dtype=bool)
    taken[rng.choice(len(pairs), max(1, round(fraction * len(pairs))), replace=False)] = True
    pick = lambda keep: Parallel([s for s, k in zip(pairs.source, keep) if k], [t for t, k in zip(pairs.target, keep) if k])  # noqa: E731
    return pick(~taken), pick(taken)


def drop_seen(train: Parallel, evals: list[Parallel]) -> tuple[Parallel, int]:
    """Training pairs whose source sentence is also an evaluation split's source removed, and their count."""
    seen = {s for part in evals for s in part.source}
    keep = [i for i, s in enumerate(train.source) if s not in seen]
    return Parallel([train.source[i] for i in keep], [train.target[i] for i in keep], train.dropped_empty, train.files), len(train) - len(keep)


def token_stats(ids: list[np.ndarray], full: list[int], max_length: int, side: str) -> dict:
    lengths = np.array([len(x) for x in ids])
    return {f"{side}_tokens_p50": int(np.percentile(lengths, 50)), f"{side}_tokens_p95": int(np.percentile(lengths, 95)),
            f"{side}_tokens_max": int(lengths.max()), f"{side}_truncated": int(sum(n + 1 > max_length for n in full))}


class Translation(TaskBase):
    name = "translation"
    select_by = "chrf"  # corpus chrF: smoother than BLEU on small or young models (BLEU is 0 until 4-grams match)
    compare_by = "bleu"  # corpus BLEU: what the report's Δ and p are in (the figure of the anchors)
    summary_metrics = ("bleu", "chrf")
    outputs = {"logits": "target"}  # (B, m, V) per target position
    quality = {"bleu": "BLEU", "chrf": "chrF"}
    short = "BLEU"
    headline = {"bleu": "bleu", "chrf": "chrf"}
    model_types = ("marian",)
    encoder_decoder = True

    def __init__(self, tokenizer=None, beam: int = 1):
        self.tokenizer = tokenizer  # the prepared data's (bind): decodes predictions
        self.beam = beam  # predict's search: greedy (1) or beam search of this size

    def bind(self, prepared: Path) -> Translation:
        """The task with the prepared data's vocabulary, which turns predicted ids into text."""
        from attnkd.models import load_tokenizer

        return Translation(load_tokenizer(Path(prepared) / TOKENIZER_DIR), self.beam)

    def searching(self, beam: int) -> Translation:
        """The task whose predictions are beam search translations of this size (1 = greedy)."""
        return Translation(self.tokenizer, beam)

    def for_evaluation(self, ep) -> Translation:
        return self.searching(ep.beam)  # evaluate.beam

    # the pipeline's capabilities: an encoder-decoder teacher's store, run and measures (hooks)
    def layer_shape(self, teacher_config: dict) -> tuple[int, int, int]:
        return teacher_config["decoder_layers"], teacher_config["decoder_attention_heads"], teacher_config["d_model"]

    def student_kinds(self, sp) -> tuple[str, ...]:
        return SEQ2SEQ_MAPS  # an encoder-decoder student's cross-, encoder and decoder self-attention

    def plan_store(self, params: Params, teacher_config: dict) -> dict[str, list[int]]:
        return hooks.translation_plan(params, teacher_config, self)

    def write_store(self, params: Params, teacher_dir: Path, meta: PreparedMeta, train: Split, planned: dict, out: Path, compute: Compute) -> str:
        return hooks.write_store(params, teacher_dir, train, planned, out, compute, self)

    def open_store(self, root: Path):
        from attnkd.tasks.translation.store import PairStore

        return PairStore(root)

    def read_manifest(self, root: Path):
        return SignalManifest.read(root)

    def assemble(self, params: Params, student: str, method: str, seed: int, teacher, store, expect=None):
        return hooks.assemble_seq2seq(params, student, method, seed, teacher, store, expect, self)

    def measure(self, models, students, records, groups, test, meta, tokenizer, params) -> tuple[dict, dict, list]:
        return hooks.translation_measures(models, students, records, groups, test, meta, self, tokenizer, params)

    # the report's words
    timing = "time to translate one sentence greedily (batch 1)"
    throughput_unit = " (sentences/s, greedy)"
    examples_note = "The first test sentences: source, reference and each model's translation (the first-seed student of each row)."

    def agreement_note(self, over: str) -> str:
        return (f"head-averaged cross-attention rows (each target token's alignment over the source), teacher-forced on the references of {over}, "
                "per mapped decoder-layer pair `t<teacher layer>-s<student layer>`.")

    def heatmap_caption(self, example: str, tokens: int) -> str:
        return (f"Head-averaged cross-attention (alignments) of the teacher and each method's first-seed student on test pair "
                f"{example}, teacher-forced on its reference (first {tokens} tokens at most; rows: target tokens, columns: source "
                "tokens), for each mapped decoder-layer pair; one colour scale per figure, proportional to the square root of the weight.")

    def describe_student(self, sp) -> str:
        return f"encoder-decoder, {sp.num_layers} + {sp.num_layers} layers, d_model {sp.hidden_size}, {sp.num_heads} heads, feed-forward {sp.intermediate_size}"

    def describe_teacher(self, params: Params) -> list[str]:
        ts = params.teacher.seq2seq
        return [f"teacher: encoder-decoder trained from scratch, {ts.encoder_layers} + {ts.decoder_layers} layers, d_model {ts.d_model}, {ts.heads} heads, "
                f"feed-forward {ts.ffn}, label smoothing {ts.label_smoothing:g}"]

    def describe_store(self, manifest) -> str:
        return hooks.store_line(manifest)

    def model_class(self) -> type:
        from transformers import MarianMTModel

        return MarianMTModel

    def prepare(self, params: Params, root: Path, out: Path) -> tuple[PreparedMeta, dict]:
        """Parallel text to features: read the splits data.splits names ({stem}.{lang}[.gz] in
        data.dir, or the splits of the hub data set data.hub_name; a missing validation or test
        split is carved from train with the seed), drop
        training pairs whose source is in an evaluation split, train the joint vocabulary on the
        training split, encode both sides; write the splits, the vocabulary and meta.json."""
        dp = params.data
        folder = sources.resolve_dir(dp.dir, root)
        stems = {k: v for k, v in dp.splits.model_dump().items() if v}
        if dp.source == "hub":
            read = read_hub_parallel(dp.hub_name, dp.hub_config, stems, dp.source_lang, dp.target_lang, dp.empty_pairs)
        else:
            read = {split: read_parallel(folder, stem, dp.source_lang, dp.target_lang, dp.empty_pairs) for split, stem in stems.items()}
        for split, part in read.items():
            if not len(part):
                where = f"hub {dp.hub_name} split {stems[split]!r}" if dp.source == "hub" else f"{folder / stems[split]}.{dp.source_lang}"
                raise UserError(f"{where}: no sentence pairs")
        splits = dict(read)
        if "test" not in splits:
            splits["train"], splits["test"] = carve(splits["train"], dp.test_fraction, params.seed)
        if "validation" not in splits:
            splits["train"], splits["validation"] = carve(splits["train"], dp.val_fraction, params.seed)
        overlap = 0
        if dp.drop_eval_overlap:
            splits["train"], overlap = drop_seen(splits["train"], [splits["validation"], splits["test"]])
        tok = train_tokenizer(splits["train"].source + splits["train"].target, dp.vocab_size)
        save_tokenizer(tok, out / TOKENIZER_DIR)
        report = {"source": dp.source, "task": f"translation {dp.source_lang}->{dp.target_lang}", "max_length": dp.max_length,
                  "vocab_size": tok.get_vocab_size(), "train_pairs_source_also_in_evaluation": {"count": overlap, "removed": dp.drop_eval_overlap},
                  "splits": {}}
        infos = {}
        for name in data.SPLITS:
            part = splits[name]
            encoded = {"source": tok.encode_batch(part.source), "target": tok.encode_batch(part.target)}  # untruncated: their lengths are reported
            src, tgt = cut(encoded["source"], dp.max_length), cut(encoded["target"], dp.max_length)
            pd.DataFrame({"text": part.source, "text_pair": part.target, "label": np.zeros(len(part), dtype=np.int64),  # the target is target_ids
                          "input_ids": src, "token_type_ids": [np.zeros(len(x), dtype=np.int8) for x in src], "target_ids": tgt,
                          }).to_parquet(out / f"{name}.parquet", index=False)
            infos[name] = SplitInfo(examples=len(part), inputs_sha256=data.ids_digest([*src, *tgt]), sha256=sha256_file(out / f"{name}.parquet"))
            full = {side: [len(e.ids) for e in encs] for side, encs in encoded.items()}
            where = f"{dp.dir}/{stems[name]}.{{{dp.source_lang},{dp.target_lang}}}" if name in read else f"carved from train (seed {params.seed})"
            report["splits"][name] = {"from": where, "pairs": len(part), "dropped_empty": part.dropped_empty,
                                      **token_stats(src, full["source"], dp.max_length, "source"), **token_stats(tgt, full["target"], dp.max_length, "target")}
        meta = PreparedMeta(label_names=[], max_length=dp.max_length, source=dp.source, pair=True, tokenizer=TOKENIZER_DIR, splits=infos)
        meta.write(out)
        return meta, report

    def head_config(self, meta: PreparedMeta) -> dict:
        return {}

    def new_teacher(self, params: Params, meta: PreparedMeta):
        """An encoder-decoder of teacher.seq2seq over the prepared vocabulary, initialised from the seed."""
        sp = params.teacher.seq2seq
        arch = Architecture(sp.encoder_layers, sp.decoder_layers, sp.d_model, sp.heads, sp.ffn, sp.dropout, max_positions=max(256, 2 * meta.max_length))
        return build_model(arch, len(self.tokenizer), params.seed), self.tokenizer

    def teacher_loss(self, params: Params):
        """Label-smoothed cross-entropy over the real target positions (teacher.seq2seq.label_smoothing)."""
        eps = params.teacher.seq2seq.label_smoothing

        def step_loss(model, batch: dict, idx: np.ndarray):
            loss = label_smoothed_ce(forward(model, batch).logits, batch["labels"], eps)
            return loss, {"ce": loss}

        return step_loss

    def new_student(self, teacher, sp, pairs: list[tuple[int, int]], seed: int):
        """An encoder-decoder of the catalogue entry: num_layers encoder and decoder layers,
        hidden_size wide, num_heads, intermediate_size feed-forward, initialised from the seed. init
        embeddings copies the teacher's (shared) embedding table, projected onto its top principal
        directions when narrower; teacher also copies, at equal sizes, decoder layer t into student
        decoder layer s for each (t, s) of the layer map, and the encoder layers the same uniform way."""
        from attnkd.losses import resolve_layer_map
        from attnkd.models import principal_projection

        tc = teacher.config
        arch = Architecture(sp.num_layers, sp.num_layers, sp.hidden_size, sp.num_heads, sp.intermediate_size, sp.hidden_dropout, sp.attention_dropout,
                            tc.max_position_embeddings)
        student = build_model(arch, tc.vocab_size, seed)
        if sp.init != "random":
            if sp.hidden_size > tc.d_model or (sp.init == "teacher" and (sp.hidden_size, sp.num_heads, sp.intermediate_size) != (tc.d_model, tc.decoder_attention_heads, tc.decoder_ffn_dim)):
                raise UserError(f"students: init {sp.init!r} needs hidden_size <= the teacher's d_model {tc.d_model} (init teacher: equal hidden_size, "
                                f"num_heads {tc.decoder_attention_heads} and intermediate_size {tc.decoder_ffn_dim}); use init: random")
            words = teacher.get_input_embeddings().weight.detach()  # (V, d_t)
            with torch.no_grad():
                student.get_input_embeddings().weight.copy_(words if sp.hidden_size == tc.d_model else words @ principal_projection(words, sp.hidden_size))
        if sp.init == "teacher":
            encoder_pairs = resolve_layer_map("uniform", tc.encoder_layers, sp.num_layers)
            for side, side_pairs in (("encoder", encoder_pairs), ("decoder", pairs)):
                for t, s_ in side_pairs:
                    getattr(student.model, side).layers[s_ - 1].load_state_dict(getattr(teacher.model, side).layers[t - 1].state_dict())
        student.get_input_embeddings().weight.requires_grad_(sp.train_embeddings)
        return student

    def collate(self, split: Split, idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
        return collate_pairs([split.input_ids[i] for i in idx], [split.extra["target_ids"][i] for i in idx])

    def forward(self, model, batch: dict, **kwargs):
        return forward(model, batch, **kwargs)

    def loss_mask(self, batch: dict) -> torch.Tensor:
        return batch["decoder_attention_mask"]  # (B, m): the target tokens, the queries of the cross-attention

    def inputs_digest(self, split: Split) -> str:
        return data.ids_digest([*split.input_ids, *split.extra["target_ids"]])

    def view(self, raw: dict[str, torch.Tensor], batch: dict) -> View:
        """One row per real target position: a model's logits (R, V), or a stored teacher's top-k
        token ids and log-probabilities (R, k), which kd reads as the teacher's distribution
        tempered and renormalised over the k (losses.topk_kd_loss) without widening them to V."""
        real = batch["decoder_attention_mask"].bool()  # (B, m)
        if "logits" in raw:
            return {"logits": raw["logits"][real]}  # (R, V)
        return {"topk_ids": raw["topk_ids"][real], "topk_logp": raw["topk_logp"][real]}  # (R, k) each

    def targets(self, batch: dict) -> View:
        return {"labels": batch["labels"][batch["decoder_attention_mask"].bool()]}  # (R,)

    def predict(self, model, split: Split, batch_size: int, pad_id: int, compute: Compute = CPU) -> np.ndarray:
        """Translations (greedy, or beam search of self.beam) as target ids, one array per source
        (an object array, split order)."""
        out = np.empty(len(split), dtype=object)
        out[:] = translate(model, list(split.input_ids), beam=self.beam, batch_size=batch_size, device=compute.device)
        return out

    def texts(self, predictions: np.ndarray) -> list[str]:
        if self.tokenizer is None:
            raise RuntimeError("Translation.bind(prepared) first: predictions are decoded with the prepared vocabulary")
        return [self.tokenizer.decode(ids.tolist()) for ids in predictions]

    def metrics(self, split: Split, predictions: np.ndarray) -> dict[str, float]:
        s = score(self.texts(predictions), list(split.extra["text_pair"]))
        return {"bleu": s.bleu, "chrf": s.chrf}

    def evaluation(self, split: Split, predictions: np.ndarray, meta: PreparedMeta, bins: int) -> tuple[dict, str]:
        """Corpus BLEU and chrF of the test split with their signatures, and one row per sentence
        (source, reference, translation, chrF, sentence BLEU)."""
        hyps = self.texts(predictions)
        s = score(hyps, list(split.extra["text_pair"]))
        quality = {"bleu": round(s.bleu, 4), "chrf": round(s.chrf, 4), "bleu_signature": s.bleu_signature, "chrf_signature": s.chrf_signature,
                   "sentences": len(hyps)}
        frame = pd.DataFrame({"source": split.extra["text"], "reference": split.extra["text_pair"], "translation": hyps,
                              "chrf": np.round(s.sentence_chrf, 4), "sentence_bleu": np.round(s.sentence_bleu, 4)})
        return quality, frame.to_csv(index=False)

    def caption(self, split: Split, i: int, meta: PreparedMeta) -> str:
        return f"reference: {split.extra['text_pair'][i]}"

    def quality_note(self, params: Params) -> str:
        search = "greedy translations" if params.evaluate.beam == 1 else f"beam search translations (beam {params.evaluate.beam})"
        return (f"BLEU and chrF: sacreBLEU's corpus scores (0-100) of {search} of the test sources, cased and detokenised "
                "(signatures in the metrics JSON). Δ, interval and p are in corpus BLEU points: each resample of seeds and test sentences "
                "is scored by its summed BLEU statistics (Koehn 2004's paired bootstrap resampling). ")

    def per_example(self, frame: pd.DataFrame) -> np.ndarray:
        """The paired test's per-sentence statistics, (N, 10): BLEU's lengths and n-gram counts of
        each translation against its reference (corpus_statistic scores their sums)."""
        return bleu_stats(frame["translation"].astype(str).tolist(), frame["reference"].astype(str).tolist())

    @staticmethod
    def corpus_statistic(stats: np.ndarray) -> np.ndarray:
        """Corpus BLEU as a fraction (the report's Δ is then in BLEU points) of summed statistics (..., 10)."""
        return bleu_from_stats(stats) / 100.0

    def data_table(self, report: dict) -> tuple[pd.DataFrame, str]:
        keys = ("pairs", "dropped_empty", "source_tokens_p50", "source_tokens_p95", "source_truncated", "target_tokens_p50", "target_tokens_p95", "target_truncated")
        rows = [{"split": name, **{k.replace("_", " "): report["splits"][name][k] for k in keys}} for name in data.SPLITS]
        froms = "; ".join(f"{k}: {report['splits'][k]['from']}" for k in data.SPLITS)
        return pd.DataFrame(rows), f"Task: {report['task']}; a joint byte-level BPE vocabulary of {report['vocab_size']} entries; sources: {froms}."

    def examples(self, frames: dict[str, pd.DataFrame], k: int) -> pd.DataFrame:
        """The first k test sentences: source, reference and each model's translation."""
        first = next(iter(frames.values())).head(k)
        out = pd.DataFrame({"source": first["source"], "reference": first["reference"]})
        for name, frame in frames.items():
            out[name] = frame["translation"].head(k).fillna("").to_numpy()
        return out


TASK = Translation()
