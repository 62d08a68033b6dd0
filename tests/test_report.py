"""The report's statistics and measurements as pure functions: calibration, attention agreement,
the paired bootstrap, and the per-method summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnkd.metrics import js_divergence
from attnkd.tasks.classification.scores import calibration_error, per_class
from attnkd.reporting import Document, pm, quality_table, summarize
from attnkd.stats import mean_std, paired_bootstrap


def test_calibration_error_of_a_perfectly_and_a_badly_calibrated_model():
    labels = np.array([0, 1, 0, 1])
    sure_and_right = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert calibration_error(labels, sure_and_right, 10) == pytest.approx(0.0)
    sure_and_half_wrong = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # confidence 1, accuracy 0.5
    assert calibration_error(labels, sure_and_half_wrong, 10) == pytest.approx(0.5)
    # two bins: 0.6-confident (accuracy 1/2) and 0.9-confident (accuracy 1/2): |0.5-0.6|/2 + |0.5-0.9|/2
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.1, 0.9], [0.1, 0.9]])
    assert calibration_error(np.array([0, 1, 0, 1]), probs, 10) == pytest.approx(0.25)


def test_calibration_error_weighs_bins_by_examples_and_counts_under_confidence():
    """Three 0.6-confident right answers (accuracy 1: under-confident by 0.4), one 0.9-confident wrong
    one (over-confident by 0.9): 3/4 * 0.4 + 1/4 * 0.9. A signed gap would give +-0.075, an
    unweighted mean of the bins 0.65."""
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.1, 0.9]])
    assert calibration_error(np.array([0, 0, 0, 0]), probs, 10) == pytest.approx(0.525)


def test_per_class_scores_count_support():
    scores = per_class(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), ["a", "b", "c"])
    assert scores["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert scores["c"]["f1"] == 1.0


def test_js_divergence_is_zero_for_equal_and_one_bit_for_disjoint_rows():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], dtype=torch.float64)
    js = js_divergence(p, q)
    assert js[0].item() == pytest.approx(0.0) and js[1].item() == pytest.approx(1.0)
    r = torch.softmax(torch.randn(4, 7, dtype=torch.float64), -1)
    s = torch.softmax(torch.randn(4, 7, dtype=torch.float64), -1)
    assert torch.allclose(js_divergence(r, s), js_divergence(s, r)) and ((js_divergence(r, s) > 0) & (js_divergence(r, s) < 1)).all()


def test_paired_bootstrap_finds_a_real_difference_and_none_where_there_is_none():
    rng = np.random.default_rng(0)
    base = (rng.random((3, 800)) < 0.80).astype(int)
    better = base.copy()
    flip = rng.random((3, 800)) < 0.25
    better[flip] = 1  # about 5 points better, on the same examples
    test = paired_bootstrap(better, base, 2000)
    assert test.delta == pytest.approx((better - base).mean()) and test.delta > 0.03
    assert test.p_value < 0.01 and test.low > 0 and test.high > test.low
    same = paired_bootstrap(base, base, 2000)
    assert same.delta == 0 and same.p_value == 1.0
    noise = (rng.random((3, 800)) < 0.80).astype(int)  # another model of equal accuracy
    assert paired_bootstrap(noise, base, 2000).p_value > 0.05
    assert paired_bootstrap(better, base, 2000).p_value == test.p_value  # fixed resampling seed: reproducible


def _same_on_every_seed(n: int, ups: int, downs: int, seeds: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of two methods on n examples, identical for every seed: a is right and b wrong on
    `ups` examples, the reverse on `downs`, both right elsewhere."""
    a, b = np.ones((seeds, n), int), np.ones((seeds, n), int)
    b[:, :ups] = 0
    a[:, ups : ups + downs] = 0
    return a, b


def test_paired_bootstrap_interval_and_p_match_the_normal_approximation_over_examples():
    """With every seed alike, only examples vary: the 95% interval is delta +- 1.96 SE and the p-value
    two-sided, 2 (1 - Phi(|delta| / SE)) = 0.123 here (a 90% interval would be 16% narrower; a
    one-sided p half as large; resampling seeds only would give no spread at all)."""
    a, b = _same_on_every_seed(800, 55, 40)
    d = (a - b)[0].astype(float)
    se = d.std() / np.sqrt(len(d))
    test = paired_bootstrap(a, b, 10000)
    assert test.delta == pytest.approx(15 / 800)
    assert (test.high - test.low) / 2 == pytest.approx(1.96 * se, rel=0.08)
    assert test.p_value == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(test.delta / se / math.sqrt(2)))), abs=0.03)
    assert test.se == pytest.approx(se, rel=0.05)
    assert test.detectable == pytest.approx((1.959964 + 0.841621) * se, rel=0.05)  # 2.80 SE: 80% power at the 5% level


def test_the_detectable_difference_is_found_four_times_in_five():
    """Power, simulated: paired differences d in {-1, 0, +1} on 400 examples with a true mean of
    the run's own `detectable`, drawn afresh 200 times, come out significant about 80% of the time
    (with 1.96 SE instead of 2.80 SE it would be about 50%)."""
    rng = np.random.default_rng(1)
    n, flips = 400, 0.3  # 30% of the examples differ between the two models

    def run(mean: float, seed: int):
        up = rng.random(n) < flips * (0.5 + mean / (2 * flips))  # P(d = +1) = (flips + mean) / 2
        down = ~up & (rng.random(n) < flips * (0.5 - mean / (2 * flips)) / (1 - flips * (0.5 + mean / (2 * flips))))
        a, b = np.ones((1, n), int), np.ones((1, n), int)
        a[0, down], b[0, up] = 0, 0
        return paired_bootstrap(a, b, 400, seed=seed)

    detectable = run(0.0, 0).detectable
    hits = [run(detectable, s).p_value < 0.05 for s in range(200)]
    assert 0.7 < np.mean(hits) < 0.9


def test_paired_bootstrap_resamples_seeds():
    """Each seed's difference is the same on every example (+1, -1, 0 on the three seeds): resampling
    examples alone would see no spread; resampling seeds spans -1..1 (a mean of 3 draws)."""
    a = np.array([[1] * 50, [0] * 50, [1] * 50])
    b = np.array([[0] * 50, [1] * 50, [1] * 50])
    test = paired_bootstrap(a, b, 4000)
    assert test.delta == 0.0 and test.low == pytest.approx(-1.0) and test.high == pytest.approx(1.0)


def test_mean_std_with_one_value_has_no_spread():
    assert mean_std([0.5, 0.7]) == (pytest.approx(0.6), pytest.approx(0.1414, abs=1e-4))
    mean, std = mean_std([0.5])
    assert mean == 0.5 and np.isnan(std)
    assert pm({"mean": 0.5, "std": None}, 3) == "0.500" and pm({"mean": 0.5, "std": 0.01}, 3) == "0.500 ± 0.010"


def result(name: str, acc: float, latency: float) -> dict:
    return {"model": name, "accuracy": acc, "f1_macro": acc, "roc_auc": 0.9, "ece": 0.05, "latency_ms": latency, "throughput_eps": 100.0,
            "params": 10, "size_mb": 1.0, "per_class": {"x": {"f1": acc}}}


def test_summary_means_seeds_and_tests_against_ce_only_with_several_seeds():
    n = 200
    correct = {"teacher": np.ones(n), "small-ce-s1": np.r_[np.ones(150), np.zeros(50)], "small-ce-s2": np.r_[np.ones(140), np.zeros(60)],
               "small-kd-s1": np.r_[np.ones(190), np.zeros(10)], "small-kd-s2": np.r_[np.ones(180), np.zeros(20)]}
    results = {"teacher": result("teacher", 1.0, 20.0)} | {k: result(k, v.mean(), 10.0) for k, v in correct.items() if k != "teacher"}
    groups = {"teacher": ["teacher"], "ce": ["small-ce-s1", "small-ce-s2"], "kd": ["small-kd-s1", "small-kd-s2"]}
    summary = summarize(results, correct, groups, 1000)
    assert summary["kd"]["accuracy"]["mean"] == pytest.approx(0.925) and summary["kd"]["seeds"] == 2
    assert summary["kd"]["speed_up"] == 2.0 and summary["kd"]["accuracy_kept_pct"] == pytest.approx(92.5)
    assert summary["kd"]["vs_ce"]["delta"] == pytest.approx(0.2) and summary["kd"]["vs_ce"]["p_value"] < 0.01
    assert "vs_ce" not in summary["ce"] and "vs_ce" not in summary["teacher"] and summary["teacher"]["accuracy"]["std"] is None
    table = quality_table(summary, 3)
    assert table.set_index("model").loc["kd", "Δ acc vs ce, points [95% CI]"].startswith("+20.0 [")
    one_seed = summarize(results, correct, {"teacher": ["teacher"], "ce": ["small-ce-s1"], "kd": ["small-kd-s1"]}, 1000)
    assert "vs_ce" not in one_seed["kd"]  # one seed: no significance claimed


def test_summary_with_a_corpus_statistic_scores_summed_statistics():
    """Translation's test: per-example (N, K) statistics, Δ of the statistic of their sums (not of a mean of ratios)."""
    rng = np.random.default_rng(3)
    total = rng.integers(1, 20, size=(4, 300)).astype(float)  # 4 models: ce and kd, 2 seeds
    hits = rng.binomial(total.astype(int), [[0.4], [0.45], [0.6], [0.62]])
    stats = {n: np.stack([hits[i], total[i]], -1) for i, n in enumerate(["small-ce-s1", "small-ce-s2", "small-kd-s1", "small-kd-s2"])}
    ratio = lambda sums: sums[..., 0] / sums[..., 1]  # noqa: E731
    results = {"teacher": result("teacher", 1.0, 20.0)} | {k: result(k, ratio(v.sum(0)), 10.0) for k, v in stats.items()}
    groups = {"teacher": ["teacher"], "ce": ["small-ce-s1", "small-ce-s2"], "kd": ["small-kd-s1", "small-kd-s2"]}
    summary = summarize(results, stats | {"teacher": np.ones((300, 2))}, groups, 500, statistic=ratio)
    expected = np.mean([ratio(stats[f"small-kd-s{s}"].sum(0)) - ratio(stats[f"small-ce-s{s}"].sum(0)) for s in (1, 2)])
    assert summary["kd"]["vs_ce"]["delta"] == pytest.approx(expected, abs=1e-6) and summary["kd"]["vs_ce"]["p_value"] < 0.01


def test_document_renders_the_same_content_as_markdown_and_html():
    import pandas as pd

    doc = Document("T <1>")
    doc.heading("Quality")
    doc.para("uses `ce` & more")
    doc.table(pd.DataFrame({"model": ["a"], "accuracy": ["0.900 ± 0.010"]}))
    doc.figure("figures/x.png", b"\x89PNG....", "a caption")
    md, html = doc.markdown(), doc.to_html()
    assert md.startswith("# T <1>") and "| a       | 0.900 ± 0.010 |" in md and "![a caption](figures/x.png)" in md
    assert "<h1>T &lt;1&gt;</h1>" in html and "<code>ce</code> &amp; more" in html and "<td>0.900 ± 0.010</td>" in html
    assert 'src="data:image/png;base64,iVBORy4uLi4="' in html


def test_the_reading_names_only_rows_whose_interval_excludes_zero():
    from attnkd.reporting import reading

    summary = {"teacher": {}, "ce": {}, "kd": {"vs_ce": {"delta": 0.021, "ci_low": 0.004, "ci_high": 0.04, "p_value": 0.012, "detectable": 0.026}},
               "at": {"vs_ce": {"delta": 0.002, "ci_low": -0.03, "ci_high": 0.03, "p_value": 0.9, "detectable": 0.043}}}
    text = reading(summary)
    assert "excludes 0, p < 0.05): kd (+2.1 points, p 0.012)." in text and "For at the interval contains 0" in text
    assert "only differences of at least 4.3 points for at" in text and "for kd" not in text  # what this run could tell
    assert reading({"teacher": {}, "ce": {}}) == ""
    assert "excludes 0, p < 0.05): none." in reading({"at": summary["at"]})
    worse = {"kd_at": {"vs_ce": {"delta": -0.03, "ci_low": -0.05, "ci_high": -0.01, "p_value": 0.004, "detectable": 0.028}}}
    assert "excludes 0, p < 0.05): kd_at (-3.0 points, p 0.004)." in reading(worse)  # an interval below 0 counts too
    edge = {"seq_kd_at": {"vs_ce": {"delta": 0.011, "ci_low": 0.0002, "ci_high": 0.022, "p_value": 0.0533, "detectable": 0.016}}}
    text = reading(edge)  # the interval's quantile and p's shifted null disagree at the edge: not claimed
    assert "excludes 0, p < 0.05): none." in text and "For seq_kd_at the interval just excludes 0 but p is 0.0533" in text


def test_corpus_bootstrap_of_a_mean_is_the_paired_bootstrap():
    """With a score that is a mean (summed 0/1 over N), the corpus bootstrap draws the same seeds and
    examples as paired_bootstrap and gives the same difference, interval and p."""
    from attnkd.stats import paired_bootstrap_corpus

    rng = np.random.default_rng(1)
    a, b = (rng.random((3, 400)) < 0.8).astype(int), (rng.random((3, 400)) < 0.76).astype(int)
    seed_biased = a.copy()
    seed_biased[0] = 1  # one seed far better: the seeds' resampling matters
    for x in (a, seed_biased):
        expected = paired_bootstrap(x, b, 1500)
        got = paired_bootstrap_corpus(x[..., None], b[..., None], lambda sums: sums[..., 0] / 400, 1500)
        assert got.delta == pytest.approx(expected.delta, abs=1e-12) and got.p_value == pytest.approx(expected.p_value, abs=1e-12)
        assert (got.low, got.high, got.se) == pytest.approx((expected.low, expected.high, expected.se), abs=1e-12)


def test_corpus_bootstrap_scores_each_seed_on_its_summed_statistics():
    """A ratio score (matches / total, not the mean of per-example ratios): the observed difference is
    the mean over seeds of each seed's ratio difference; equal systems give p 1."""
    from attnkd.stats import paired_bootstrap_corpus

    rng = np.random.default_rng(2)
    total = rng.integers(1, 30, size=(3, 300)).astype(float)
    base = np.stack([rng.binomial(total.astype(int), 0.5), total], -1)  # (S, N, 2)
    better = np.stack([np.minimum(base[..., 0] + rng.binomial(total.astype(int), 0.1), total), total], -1)
    ratio = lambda sums: sums[..., 0] / sums[..., 1]  # noqa: E731
    test = paired_bootstrap_corpus(better, base, ratio, 2000)
    assert test.delta == pytest.approx(np.mean([ratio(better[s].sum(0)) - ratio(base[s].sum(0)) for s in range(3)]))
    assert test.delta > 0.03 and test.p_value < 0.01 and test.low > 0
    assert paired_bootstrap_corpus(base, base, ratio, 500).p_value == 1.0
