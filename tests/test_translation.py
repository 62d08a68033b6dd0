"""Translation building blocks on the real Multi30k files: parallel reading, the joint subword
vocabulary, and sacreBLEU's scores pinned on hand-worked cases."""

import gzip
import math

import pytest

from attnkd.errors import UserError
from attnkd.tasks.translation.text import SPECIALS, read_parallel, score, train_tokenizer
from conftest import shared_data

RAW = "multi30k/task1/raw"


@pytest.fixture(scope="module")
def raw():
    return shared_data(f"{RAW}/val.en.gz") / RAW


def test_reads_the_aligned_validation_pairs(raw):
    val = read_parallel(raw, "val", "en", "de")
    assert len(val) == 1014 and val.dropped_empty == 0 and val.files == {"en": "val.en.gz", "de": "val.de.gz"}
    first_en = gzip.decompress((raw / "val.en.gz").read_bytes()).decode().split("\n")[0]
    first_de = gzip.decompress((raw / "val.de.gz").read_bytes()).decode().split("\n")[0]
    assert (val.source[0], val.target[0]) == (" ".join(first_en.split()), " ".join(first_de.split()))
    assert "ü" in "".join(val.target) or "ä" in "".join(val.target)  # UTF-8, accents kept


def test_plain_and_gzip_files_read_the_same_and_bad_files_are_named(tmp_path, raw):
    for lang in ("en", "de"):
        (tmp_path / f"val.{lang}").write_bytes(gzip.decompress((raw / f"val.{lang}.gz").read_bytes()))
    assert read_parallel(tmp_path, "val", "en", "de").target == read_parallel(raw, "val", "en", "de").target
    (tmp_path / "x.en").write_text("a\nb\nc\n")
    (tmp_path / "x.de").write_text("a\n\nc\n")
    assert read_parallel(tmp_path, "x", "en", "de").dropped_empty == 1  # an empty side drops the pair
    (tmp_path / "y.en").write_text("a\nb\nc\n")
    (tmp_path / "y.de").write_text("a\nb\n")
    with pytest.raises(UserError, match=r"y\.en: 3 lines, but .*y\.de has 2"):
        read_parallel(tmp_path, "y", "en", "de")
    with pytest.raises(UserError, match=r"z\.en: not found"):
        read_parallel(tmp_path, "z", "en", "de")
    (tmp_path / "w.en").write_bytes(b"fine\nbad \xff byte\n")
    (tmp_path / "w.de").write_text("a\nb\n")
    with pytest.raises(UserError, match=r"w\.en: line 2: not valid UTF-8"):
        read_parallel(tmp_path, "w", "en", "de")


def test_the_vocabulary_is_fixed_by_its_texts_and_decodes_every_test_sentence(raw):
    train = read_parallel(raw, "train", "en", "de")
    texts = train.source[:3000] + train.target[:3000]
    a, b = train_tokenizer(texts, 2000), train_tokenizer(texts, 2000)
    assert a.to_str() == b.to_str() and a.get_vocab_size() == 2000
    assert [a.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3]
    test = read_parallel(raw, "test_2016_flickr", "en", "de")
    for sentence in test.source + test.target:  # byte-level: every sentence comes back exactly
        ids = a.encode(sentence).ids
        assert a.decode(ids) == sentence and min(ids) >= len(SPECIALS)


def test_bleu_and_chrf_on_hand_worked_cases():
    same = score(["a man rides a horse ."], ["a man rides a horse ."])
    assert same.bleu == pytest.approx(100.0) and same.chrf == pytest.approx(100.0)
    # every n-gram of the hypothesis matches; it is 6 tokens against 7: BLEU = brevity penalty = exp(1 - 7/6)
    short = score(["the cat sat on the mat"], ["the cat sat on the mat ."])
    assert short.bleu == pytest.approx(100 * math.exp(1 - 7 / 6), abs=1e-4)
    assert score(["xyz"], ["abc def"]).chrf == pytest.approx(0.0)
    assert "case:mixed" in short.bleu_signature and "tok:13a" in short.bleu_signature and "nc:6" in short.chrf_signature
    two = score(["a man rides a horse .", "xyz"], ["a man rides a horse .", "a dog runs ."])
    assert two.sentence_chrf[0] == pytest.approx(100.0) and two.sentence_bleu[0] == pytest.approx(100.0) and two.sentence_bleu[1] == 0.0
    with pytest.raises(ValueError):
        score(["a"], ["a", "b"])


def test_summed_sentence_statistics_give_sacrebleus_corpus_bleu(raw):
    """The paired test's BLEU: bleu_from_stats of summed bleu_stats equals sacreBLEU's corpus BLEU
    on the whole set, on resamples with repeated sentences, and on sets of a few short sentences
    where higher n-gram orders have no match (the exponential smoothing)."""
    import numpy as np
    from sacrebleu.metrics import BLEU

    from attnkd.tasks.translation.text import bleu_from_stats, bleu_stats

    refs = read_parallel(raw, "val", "en", "de").target[:200]
    rng = np.random.default_rng(0)
    hyps = [" ".join(rng.permutation(r.split())[: max(1, len(r.split()) - int(rng.integers(0, 4)))]) for r in refs]
    stats = bleu_stats(hyps, refs)  # (N, 10)
    assert stats.shape == (200, 10)
    assert bleu_from_stats(stats.sum(0)) == pytest.approx(BLEU().corpus_score(hyps, [refs]).score, abs=1e-9)
    zero_orders = 0
    for size in [*([200] * 5), *([2] * 40)]:
        idx = rng.integers(0, 200, size=size)  # with replacement, as a bootstrap resample draws
        expected = BLEU().corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score
        assert bleu_from_stats(stats[idx].sum(0)) == pytest.approx(expected, abs=1e-9)
        zero_orders += int((stats[idx].sum(0)[2:6] == 0).any())
    assert zero_orders > 3  # the smoothed case was exercised
    batch = np.stack([stats[:100].sum(0), stats[100:].sum(0)])  # (2, 10): one score per row
    assert bleu_from_stats(batch) == pytest.approx([BLEU().corpus_score(hyps[:100], [refs[:100]]).score, BLEU().corpus_score(hyps[100:], [refs[100:]]).score])


def test_one_seeds_paired_bootstrap_agrees_with_sacrebleus_paired_test(raw):
    """With one seed the report's test is Koehn's paired bootstrap on corpus BLEU, which sacreBLEU
    implements (`PairedTest`, test_type bs): on the same two systems the difference is sacreBLEU's
    score difference, and the two p-values agree on a clear gain (both < 0.01) and on systems
    that differ by chance (both above 0.05). They are not equal: sacreBLEU (as Moses' script)
    tests the resampled |difference| centred on its mean, which folds the distribution; the report
    shifts the signed differences to the null (here, for a difference of about one standard
    error: 0.26 against sacreBLEU's 0.09)."""
    import numpy as np
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    from attnkd.stats import paired_bootstrap_corpus
    from attnkd.tasks.translation.text import bleu_from_stats, bleu_stats

    refs = read_parallel(raw, "val", "en", "de").target[:300]
    rng = np.random.default_rng(1)

    def damaged(share: float) -> list[str]:  # each sentence, with probability share, loses a word and has two swapped
        out = []
        for r in refs:
            words = r.split()
            if rng.random() < share and len(words) > 3:
                words.pop(int(rng.integers(len(words))))
                i = int(rng.integers(len(words) - 1))
                words[i], words[i + 1] = words[i + 1], words[i]
            out.append(" ".join(words))
        return out

    base, better = damaged(0.9), damaged(0.6)
    near = [b if rng.random() < 0.97 else r for b, r in zip(base, damaged(0.9))]  # base with a few sentences redrawn
    for system, clear in ((better, True), (near, False)):
        ours = paired_bootstrap_corpus(bleu_stats(system, refs)[None], bleu_stats(base, refs)[None], bleu_from_stats, 1000)
        _, scores = PairedTest([("base", base), ("system", system)], {"BLEU": BLEU()}, [refs], test_type="bs", n_samples=1000)()  # seeded by SACREBLEU_SEED, 12345 unless set
        theirs = scores["BLEU"][1]
        assert ours.delta == pytest.approx(theirs.score - scores["BLEU"][0].score, abs=1e-9)
        if clear:
            assert ours.delta > 2 and ours.p_value < 0.01 and theirs.p_value < 0.01
        else:
            assert abs(ours.delta) < 1 and ours.p_value > 0.05 and theirs.p_value > 0.05, (ours, theirs.p_value)
