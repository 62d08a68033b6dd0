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


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, samples: int, seed: int = 0) -> Paired:
    """Two-level paired bootstrap of the accuracy difference between two methods.

    correct_a, correct_b: (S, N) 0/1 correctness of S seeds on the same N evaluation examples;
    row s of both comes from the same seed (same initialisation and data order). Each resample
    draws S seeds and N examples with replacement, both shared by the two methods, so the test
    accounts for seed-to-seed and example-to-example variation. The p-value is the share of
    resampled differences at least as far from the observed one as the observed one is from 0
    (the bootstrap distribution shifted to the null), with the usual +1 correction.
    """
    d = correct_a.astype(np.float64) - correct_b.astype(np.float64)  # (S, N)
    n_seeds, n = d.shape
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=samples)  # (B, S)
    deltas = np.empty(samples)
    for start in range(0, samples, 1000):  # (1000, N) example counts at a time
        stop = min(start + 1000, samples)
        example_counts = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start)  # (b, N)
        deltas[start:stop] = np.einsum("bs,sn,bn->b", seed_counts[start:stop], d, example_counts) / (n_seeds * n)
    observed = float(d.mean())
    extreme = np.sum(np.abs(deltas - observed) >= abs(observed) - 1e-12)
    low, high = np.quantile(deltas, [0.025, 0.975])
    return Paired(observed, float(low), float(high), float((extreme + 1) / (samples + 1)), float(deltas.std(ddof=1)))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for one value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")
