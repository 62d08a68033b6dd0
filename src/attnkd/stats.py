"""Comparing methods across seeds: the paired bootstrap the report quotes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# z_{1 - 0.05/2} + z_{0.80}: a true difference this many standard errors from 0 is found
# significant (two-sided, 5% level) four times in five
Z_DETECT = 1.959964 + 0.841621


@dataclass(frozen=True)
class Paired:
    delta: float  # mean accuracy difference a - b, over seeds and examples
    low: float  # 95% bootstrap interval of the difference
    high: float
    p_value: float  # two-sided, H0: no difference
    se: float  # standard error of the difference: the spread (std) of the resampled differences

    @property
    def detectable(self) -> float:
        """The smallest true difference this run finds significant with 80% power (two-sided,
        5% level), under a normal approximation of the bootstrap: (z_0.975 + z_0.8) * se.
        A difference smaller than this, significant or not, is one this run cannot reliably tell."""
        return Z_DETECT * self.se


def _resamples(n_seeds: int, n: int, samples: int, rng: np.random.Generator):
    """The two-level resamples, in chunks of at most 1000: (seed counts (b, S), example counts
    (b, N)), each row a draw of S seeds and N examples with replacement."""
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=samples)  # (B, S)
    for start in range(0, samples, 1000):
        stop = min(start + 1000, samples)
        yield seed_counts[start:stop], rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start)


def _paired(observed: float, deltas: np.ndarray) -> Paired:
    """The interval, p and standard error of an observed difference from its resampled differences:
    p is the share of resampled differences at least as far from the observed one as the observed
    one is from 0 (the bootstrap distribution shifted to the null), with the usual +1 correction."""
    extreme = np.sum(np.abs(deltas - observed) >= abs(observed) - 1e-12)
    low, high = np.quantile(deltas, [0.025, 0.975])
    return Paired(observed, float(low), float(high), float((extreme + 1) / (len(deltas) + 1)), float(deltas.std(ddof=1)))


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, samples: int, seed: int = 0) -> Paired:
    """Two-level paired bootstrap of the accuracy difference between two methods.

    correct_a, correct_b: (S, N) 0/1 correctness of S seeds on the same N evaluation examples;
    row s of both comes from the same seed (same initialisation and data order). Each resample
    draws S seeds and N examples with replacement, both shared by the two methods, so the test
    accounts for seed-to-seed and example-to-example variation.
    """
    d = correct_a.astype(np.float64) - correct_b.astype(np.float64)  # (S, N)
    n_seeds, n = d.shape
    deltas = np.concatenate([np.einsum("bs,sn,bn->b", seeds, d, examples) / (n_seeds * n)
                             for seeds, examples in _resamples(n_seeds, n, samples, np.random.default_rng(seed))])
    return _paired(float(d.mean()), deltas)


def paired_bootstrap_corpus(stats_a: np.ndarray, stats_b: np.ndarray, statistic, samples: int, seed: int = 0) -> Paired:
    """The same two-level paired bootstrap for a corpus-level score that is not a mean over
    examples (corpus BLEU: Koehn 2004's paired bootstrap resampling, over seeds as well).

    stats_a, stats_b: (S, N, K) per-example sufficient statistics (BLEU: lengths and n-gram
    counts); statistic: summed statistics (..., K) -> the score (...). The difference is the mean
    over seeds of score_a - score_b, each score of the whole test set's summed statistics; each
    resample draws S seeds and N examples (the same draws as paired_bootstrap's for the same seed)
    and scores the resampled sums.
    """
    a, b = stats_a.astype(np.float64), stats_b.astype(np.float64)
    n_seeds, n, _ = a.shape
    deltas = []
    for seeds, examples in _resamples(n_seeds, n, samples, np.random.default_rng(seed)):
        per_seed = statistic(np.einsum("bn,snk->bsk", examples, a)) - statistic(np.einsum("bn,snk->bsk", examples, b))  # (b, S)
        deltas.append((seeds * per_seed).sum(1) / n_seeds)
    return _paired(float(np.mean(statistic(a.sum(1)) - statistic(b.sum(1)))), np.concatenate(deltas))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for one value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")
