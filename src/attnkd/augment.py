"""The transfer set: unlabelled variants of the training texts, made by rules that need no model hub.

Tang et al. 2019 ("Distilling Task-Specific Knowledge from BERT into Simple Neural Networks",
section 3.3) make a large transfer set from the training sentences and let the teacher label it.
Their rules, per word w_i of a text (whitespace-separated):
- masking: with probability mask_p, w_i becomes [MASK];
- substitution: else, with probability substitute_p, w_i becomes another word. The paper takes a
  word of the same part of speech; here, with no tagger or hub, its nearest neighbour by cosine
  in the teacher's word-embedding table, among whole-word vocabulary entries (`neighbours`);
- n-gram sampling: then, with probability ngram_p, the variant is cut to a random n-gram,
  n uniform in 1..ngram_max.
A sentence pair gets the word rules on both texts and no n-gram cut (it must stay a pair).
Every draw comes from one numpy generator seeded with params `seed`, so the set is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from attnkd.params import AugmentParams

MASK = "[MASK]"


@dataclass
class Counts:
    """What the rules did: words seen, masked and substituted; variants cut to an n-gram."""

    words: int = 0
    masked: int = 0
    substituted: int = 0
    ngrams: int = 0
    variants: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"same_as_source": 0, "duplicate": 0})


def whole_words(tokenizer) -> tuple[list[str], np.ndarray]:
    """The vocabulary's whole-word entries made of letters (no ##pieces, [unused], punctuation,
    digits): the candidates of a substitution. Returns (words, their ids)."""
    vocab = tokenizer.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) > 1)
    return words, np.array([vocab[w] for w in words], dtype=np.int64)


@torch.no_grad()
def neighbours(tokenizer, embeddings: torch.Tensor, texts: list[str]) -> dict[str, str]:
    """For every word of `texts` that is one whole-word vocabulary entry: its nearest other entry
    by cosine of the word embeddings (V, H), keyed by the lower-cased word (the packaged teacher's
    vocabulary is uncased). Words that are not one entry (split into pieces, punctuation attached)
    map to nothing."""
    words, ids = whole_words(tokenizer)
    index = {w: i for i, w in enumerate(words)}
    seen = sorted({w.lower() for t in texts for w in t.split() if w.lower() in index})
    if not seen:
        return {}
    table = torch.nn.functional.normalize(embeddings[torch.from_numpy(ids)].float(), dim=-1)  # (W, H)
    out = {}
    for start in range(0, len(seen), 1024):
        chunk = seen[start : start + 1024]
        rows = torch.tensor([index[w] for w in chunk])
        sims = table[rows] @ table.T  # (c, W)
        sims[torch.arange(len(chunk)), rows] = -2.0  # not itself
        out |= {w: words[j] for w, j in zip(chunk, sims.argmax(1).tolist())}
    return out


def vary_words(words: list[str], ap: AugmentParams, rng: np.random.Generator, subs: dict[str, str], counts: Counts) -> list[str]:
    """Masking and substitution, one uniform draw per word (the first mask_p of [0, 1) masks, the
    next substitute_p substitutes; a word without a neighbour stays)."""
    out = []
    for w, x in zip(words, rng.random(len(words))):
        counts.words += 1
        if x < ap.mask_p:
            out.append(MASK)
            counts.masked += 1
        elif x < ap.mask_p + ap.substitute_p and w.lower() in subs:
            out.append(subs[w.lower()])
            counts.substituted += 1
        else:
            out.append(w)
    return out


def cut_ngram(words: list[str], ap: AugmentParams, rng: np.random.Generator, counts: Counts) -> list[str]:
    """With ngram_p, a random n-gram of the words (n uniform in 1..ngram_max, at most all)."""
    if rng.random() >= ap.ngram_p or len(words) < 2:
        return words
    n = int(rng.integers(1, min(ap.ngram_max, len(words)) + 1))
    start = int(rng.integers(0, len(words) - n + 1))
    counts.ngrams += 1
    return words[start : start + n]


def transfer_texts(texts: list[str], pairs: list[str] | None, ap: AugmentParams, seed: int, subs: dict[str, str]
                   ) -> tuple[list[str], list[str], list[int], Counts]:
    """`ap.copies` variants of every text (and pair text): the variants' texts, pair texts ("" for
    single texts), the index of the text each came from, and the counts. A variant equal to its
    source, or to an earlier variant, is dropped."""
    rng = np.random.default_rng(seed)
    counts = Counts()
    seen = set(zip(texts, pairs or [""] * len(texts)))
    out_t, out_p, source = [], [], []
    for i, text in enumerate(texts):
        for _ in range(ap.copies):
            words = vary_words(text.split(), ap, rng, subs, counts)
            if pairs is None:
                variant = (" ".join(cut_ngram(words, ap, rng, counts)), "")
            else:
                variant = (" ".join(words), " ".join(vary_words(pairs[i].split(), ap, rng, subs, counts)))
            counts.variants += 1
            if variant == (text, pairs[i] if pairs else ""):
                counts.dropped["same_as_source"] += 1
            elif variant in seen:
                counts.dropped["duplicate"] += 1
            else:
                seen.add(variant)
                out_t.append(variant[0])
                out_p.append(variant[1])
                source.append(i)
    return out_t, out_p, source, counts
