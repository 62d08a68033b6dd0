"""Machine translation building blocks: line-aligned parallel text, a joint subword vocabulary
trained on the training split, and sacreBLEU's BLEU and chrF.

Parallel text is the format of Multi30k, WMT and most corpora: one file per split and language,
`{split}.{lang}` (gzip or plain), one sentence per line, lines aligned across languages. The
vocabulary is one byte-level BPE over both languages (Radford et al. 2019; the `tokenizers`
library), trained on the training split only, so teacher and students share it and decoding
returns the text exactly, accents and casing included (every byte has a symbol). Scores are
sacreBLEU's (Post 2018): corpus BLEU and chrF on detokenised, cased text, with the signatures
that say how they were computed, and per-sentence chrF and BLEU for the paired bootstrap.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from attnkd.errors import UserError

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3


@dataclass(frozen=True)
class Parallel:
    source: list[str]
    target: list[str]
    dropped_empty: int = 0  # pairs with an empty side
    files: dict[str, str] = field(default_factory=dict)  # language -> the file read

    def __len__(self) -> int:
        return len(self.source)


def find_file(root: Path, split: str, lang: str) -> Path:
    """`{split}.{lang}` or `{split}.{lang}.gz` in root."""
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if (root / name).is_file():
            return root / name
    raise UserError(f"{root / f'{split}.{lang}'}: not found (nor .gz); data.dir holds one file per split and language, {split}.{lang}[.gz]")


def read_lines(path: Path) -> list[str]:
    """A text file's lines (gzip or plain, UTF-8), without line ends; a bad byte names its line."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = raw.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            out.append(line.rstrip(b"\r").decode("utf-8"))
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: line {number}: not valid UTF-8 at byte {err.start}") from None
    return out


def as_parallel(source: list, target: list, where: dict[str, str], empty: str = "drop", unit: str = "line") -> Parallel:
    """Aligned sentences as pairs: whitespace collapsed, a pair with an empty (or missing) side
    dropped and counted, or, with empty "fail", stopped at the first naming where it is (`where`:
    language -> the file or hub column) and its line (row)."""
    pairs = [(" ".join((s or "").split()), " ".join((t or "").split())) for s, t in zip(source, target)]
    if empty == "fail":
        for number, pair in enumerate(pairs, start=1):
            for lang, text in zip(where, pair):
                if not text:
                    raise UserError(f"{where[lang]}: {unit} {number}: empty sentence (data.empty_pairs: fail; drop skips such pairs and counts them)")
    kept = [(s, t) for s, t in pairs if s and t]
    return Parallel([s for s, _ in kept], [t for _, t in kept], len(pairs) - len(kept), dict(where))


def read_parallel(root: Path, split: str, src: str, tgt: str, empty: str = "drop") -> Parallel:
    """The aligned sentence pairs of one split's files (`as_parallel`). Files of different lengths
    stop with both files and counts named."""
    paths = {lang: find_file(root, split, lang) for lang in (src, tgt)}
    sides = {lang: read_lines(p) for lang, p in paths.items()}
    if len(sides[src]) != len(sides[tgt]):
        raise UserError(f"{paths[src]}: {len(sides[src])} lines, but {paths[tgt]} has {len(sides[tgt])}; parallel files must align line by line")
    parallel = as_parallel(sides[src], sides[tgt], {lang: str(p) for lang, p in paths.items()}, empty)
    return replace(parallel, files={lang: p.name for lang, p in paths.items()})  # errors name the path, the record the file


def read_hub_parallel(name: str, config: str, splits: dict[str, str], src: str, tgt: str, empty: str = "drop") -> dict[str, Parallel]:
    """The splits of a Hugging Face `datasets` parallel corpus (`sources.load_hub`: offline, one
    line saying so), in either layout the hub uses: a `translation` column of {language: sentence}
    (WMT, OPUS) or one column per language (e.g. multi30k's `en` and `de`)."""
    from attnkd import sources

    loaded = sources.load_hub(name, config)
    out = {}
    for split, hub_split_name in splits.items():
        ds, where = sources.hub_split(loaded, name, config, split, hub_split_name)
        columns = list(ds.column_names)
        if "translation" in columns:
            rows = ds["translation"]
            langs = sorted(rows[0]) if len(rows) else []
            if len(rows) and not {src, tgt} <= set(langs):
                raise UserError(f"{where}: its translation column has languages {langs}, not {src!r} and {tgt!r} (data.source_lang, data.target_lang)")
            sides = {lang: [r.get(lang) for r in rows] for lang in (src, tgt)}
            at = {lang: f"{where} translation.{lang}" for lang in (src, tgt)}
        elif src in columns and tgt in columns:
            sides = {lang: ds[lang] for lang in (src, tgt)}
            at = {lang: f"{where} column {lang!r}" for lang in (src, tgt)}
        else:
            raise UserError(f"{where}: no translation column nor columns {src!r} and {tgt!r} (data.source_lang, data.target_lang); it has {columns}")
        out[split] = as_parallel(sides[src], sides[tgt], at, empty, unit="row")
    return out


def train_tokenizer(texts: list[str], vocab_size: int):
    """One byte-level BPE vocabulary of `vocab_size` entries (4 specials first: <pad> <s> </s>
    <unk>) learnt from `texts` in order: the same texts give the same vocabulary. Returns a
    `tokenizers.Tokenizer`; encode gives ids without specials, decode gives the text back."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


@dataclass(frozen=True)
class Scores:
    bleu: float  # corpus BLEU, 0..100
    chrf: float  # corpus chrF, 0..100
    bleu_signature: str
    chrf_signature: str
    sentence_chrf: list[float]  # per sentence, 0..100: the paired bootstrap resamples these
    sentence_bleu: list[float]


def score(hypotheses: list[str], references: list[str]) -> Scores:
    """sacreBLEU's corpus BLEU (13a tokenisation, cased, exponential smoothing) and chrF (character
    6-grams, beta 2) of detokenised hypotheses against one reference each, with their signatures,
    and the same metrics per sentence."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    sentence_bleu = BLEU(effective_order=True)  # sentence BLEU: n-gram orders the sentence has
    return Scores(
        bleu.corpus_score(hypotheses, [references]).score,
        chrf.corpus_score(hypotheses, [references]).score,
        str(bleu.get_signature()),
        str(chrf.get_signature()),
        [chrf.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)],
        [sentence_bleu.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)],
    )


def bleu_stats(hypotheses: list[str], references: list[str]) -> np.ndarray:
    """(N, 10) sacreBLEU's sufficient statistics of each sentence under the corpus BLEU of `score`:
    hypothesis length, reference length, matching n-grams for n = 1..4, hypothesis n-grams for
    n = 1..4. Summed over any set of sentences they give that set's corpus BLEU (bleu_from_stats)."""
    from sacrebleu.metrics import BLEU

    return np.asarray(BLEU()._extract_corpus_statistics(hypotheses, [references]), dtype=np.float64).reshape(len(hypotheses), 10)


def bleu_from_stats(stats: np.ndarray) -> np.ndarray:
    """Corpus BLEU (0..100) of summed statistics (..., 10) laid out as bleu_stats'; sacreBLEU's
    `BLEU.compute_bleu` with its default exponential smoothing, vectorised: a zero match count at
    order n halves that order's precision each time one occurs (1 / (2^z total_n)),
    BP = exp(1 - ref / hyp) when hyp < ref, BLEU = BP * exp(mean_n log p_n); 0 without any match."""
    hyp, ref, correct, total = stats[..., 0], stats[..., 1], stats[..., 2:6], stats[..., 6:10]
    zeros = np.cumsum(correct == 0, axis=-1)  # (..., 4) the smoothing exponent at each order
    safe_total = np.maximum(total, 1.0)
    precision = np.where(correct > 0, correct / safe_total, 1.0 / (2.0 ** zeros * safe_total))
    precision = np.where(total > 0, precision, 0.0)
    with np.errstate(divide="ignore"):
        bp = np.where(hyp < ref, np.exp(1.0 - ref / np.maximum(hyp, 1e-300)), 1.0)
        bleu = 100.0 * bp * np.exp(np.log(precision).mean(-1))
    return np.where(correct.sum(-1) > 0, bleu, 0.0)
