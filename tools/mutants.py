"""Mutation check: break the code on purpose, one known way at a time, and show a test fails.

    python tools/mutants.py            # every mutant (about 2 minutes on 2 cores)
    python tools/mutants.py kd_no_t2   # some of them, by name

Each mutant is one textual change to one source file: a wrong layer, zeros, a sum for a mean, a
missing absolute value... It is applied to a copy of the working tree (never to this one), the
tests that should notice it are run there, and the mutant counts as caught when they fail.
First the same tests run on the unbroken copy and must pass. Exit status 1 when a mutant survives.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOSS_TESTS = ("tests/test_losses.py", "tests/test_objective.py")
STORE_TESTS = ("tests/test_objective.py", "tests/test_signals.py")
STATS_TESTS = ("tests/test_report.py",)
SQUAD_TESTS = ("tests/test_squad.py",)


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    # the store and the layer convention
    Mutant("attn_from_the_layer_below", "src/attnkd/models.py", "return out.attentions[layer - 1]", "return out.attentions[max(layer - 2, 0)]", STORE_TESTS),
    Mutant("hidden_from_the_layer_below", "src/attnkd/models.py", "return out.hidden_states[layer]", "return out.hidden_states[layer - 1]", STORE_TESTS),
    Mutant("qkv_captured_from_the_layer_below", "src/attnkd/models.py", "attn = model.bert.encoder.layer[l - 1].attention.self",
           "attn = model.bert.encoder.layer[max(l - 2, 0)].attention.self", STORE_TESTS),
    Mutant("store_writes_zero_qkv_and_scores", "src/attnkd/signals.py", "x = tensors[(kind, l)].cpu().numpy()",
           "x = tensors[(kind, l)].cpu().numpy() * (kind not in ('q', 'k', 'v', 'scores'))", STORE_TESTS),
    Mutant("store_writes_zeros", "src/attnkd/signals.py", "x = tensors[(kind, l)].cpu().numpy()", "x = tensors[(kind, l)].cpu().numpy() * 0", STORE_TESTS),
    Mutant("store_writes_zero_logits", "src/attnkd/signals.py", "x = value.cpu().numpy()", "x = value.cpu().numpy() * 0", STORE_TESTS),
    # losses: heads, scaling, reductions
    Mutant("kd_without_t2", "src/attnkd/losses.py", 'reduction="batchmean") * temperature**2', 'reduction="batchmean")', LOSS_TESTS),
    Mutant("attn_kl_sums_heads", "src/attnkd/losses.py", "/ (queries.sum((1, 2)) * attn_s.shape[1])", "/ queries.sum((1, 2))", LOSS_TESTS),
    Mutant("attn_mse_sums_heads", "src/attnkd/losses.py", "/ (pair.sum((1, 2, 3)) * attn_s.shape[1])", "/ pair.sum((1, 2, 3))", LOSS_TESTS),
    Mutant("relation_scaled_by_sqrt_width", "src/attnkd/losses.py", "xh @ xh.transpose(-1, -2) / xh.shape[-1] ** 0.5",
           "xh @ xh.transpose(-1, -2) / x.shape[-1] ** 0.5", LOSS_TESTS),
    Mutant("qkv_relation_sums_the_three", "src/attnkd/losses.py", 'for k in ("q", "k", "v")]).mean()', 'for k in ("q", "k", "v")]).sum()', LOSS_TESTS),
    Mutant("value_relation_one_head", "src/attnkd/losses.py", 'value_relation_loss(s["v"], t["v"], mask, cfg.teacher_heads)',
           'value_relation_loss(s["v"], t["v"], mask, 1)', LOSS_TESTS),
    Mutant("attn_kl_keeps_padded_queries", "src/attnkd/losses.py", "queries = mask[:, None, :].float()  # (B, 1, T)",
           "queries = torch.ones_like(mask[:, None, :]).float()  # (B, 1, T)", LOSS_TESTS),
    Mutant("relation_heads_checked_on_the_student_only", "src/attnkd/losses.py",
           'for side, width in (("student", cfg.student_width), ("teacher", cfg.teacher_width)):',
           'for side, width in (("student", cfg.student_width),):', ("tests/test_objective.py",)),
    # statistics
    Mutant("bootstrap_resamples_seeds_only", "src/attnkd/stats.py", "example_counts = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start)",
           "example_counts = np.ones((stop - start, n))", STATS_TESTS),
    Mutant("bootstrap_resamples_examples_only", "src/attnkd/stats.py",
           "seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=samples)", "seed_counts = np.ones((samples, n_seeds))", STATS_TESTS),
    Mutant("bootstrap_90_percent_interval", "src/attnkd/stats.py", "np.quantile(deltas, [0.025, 0.975])", "np.quantile(deltas, [0.05, 0.95])", STATS_TESTS),
    Mutant("bootstrap_one_sided_p", "src/attnkd/stats.py", "np.abs(deltas - observed) >= abs(observed) - 1e-12",
           "np.sign(observed) * (deltas - observed) >= abs(observed) - 1e-12", STATS_TESTS),
    Mutant("ece_signed_gap", "src/attnkd/metrics.py", "abs(correct[in_bin].mean() - conf[in_bin].mean())",
           "(conf[in_bin].mean() - correct[in_bin].mean())", STATS_TESTS),
    # SQuAD scores, windows and answers
    Mutant("squad_keeps_articles", "src/attnkd/squad.py", 'text = re.sub(r"\\b(a|an|the)\\b", " ", text)', "text = text", SQUAD_TESTS),
    Mutant("squad_f1_counts_repeated_tokens", "src/attnkd/squad.py", "common = sum((collections.Counter(p) & collections.Counter(g)).values())",
           "common = len([t for t in p if t in g])", SQUAD_TESTS),
    Mutant("squad_answer_start_one_token_late", "src/attnkd/squad.py", "start = next(i for i in inside if offsets[i][1] > a0)",
           "start = next(i for i in inside if offsets[i][1] > a0) + 1", SQUAD_TESTS),
    Mutant("squad_answer_length_unchecked", "src/attnkd/squad.py", " or e - s + 1 > max_answer_tokens", "", SQUAD_TESTS),
    Mutant("squad_span_rows_mask_cls", "src/attnkd/squad.py", "allowed[:, 0] = True  # [CLS]", "allowed[:, 0] = False  # [CLS]", SQUAD_TESTS),
    Mutant("squad_span_rows_keep_the_question", "src/attnkd/squad.py", "allowed = (token_type_ids.bool() & attention_mask.bool()).clone()",
           "allowed = attention_mask.bool().clone()", SQUAD_TESTS),
    Mutant("ece_unweighted_bins", "src/attnkd/metrics.py", "ece += in_bin.mean() * abs(", "ece += 1 / len(np.unique(which)) * abs(", STATS_TESTS),
]


def copy_tree(dst: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored)."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in names:
        if (REPO / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dst / name)


def tests_fail(root: Path, tests: tuple[str, ...]) -> bool:
    env = dict(os.environ, PYTHONPATH=str(root / "src"), TQDM_DISABLE="1")
    env.setdefault("ATTNKD_SHARED_DATA", str(REPO.parent / "shared/data"))  # the copy is not beside ../shared
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider", *tests], cwd=root, env=env,
                          capture_output=True, text=True)
    return proc.returncode != 0


def main(names: list[str]) -> int:
    chosen = [m for m in MUTANTS if not names or m.name in names]
    unknown = set(names) - {m.name for m in MUTANTS}
    if unknown:
        sys.exit(f"unknown mutant(s): {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="attnkd-mutants-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        suites = sorted({t for m in chosen for t in m.tests})
        if tests_fail(root, tuple(suites)):
            sys.exit(f"the unbroken code fails {' '.join(suites)}: fix that first")
        survivors = []
        for m in chosen:
            path = root / m.file
            original = path.read_text()
            if original.count(m.old) != 1:
                sys.exit(f"{m.name}: the text to change is not found exactly once in {m.file}")
            path.write_text(original.replace(m.old, m.new))
            try:
                caught = tests_fail(root, m.tests)
            finally:
                path.write_text(original)
            print(f"{'caught  ' if caught else 'SURVIVED'} {m.name:44s} {m.file}  ({' '.join(m.tests)})", flush=True)
            if not caught:
                survivors.append(m.name)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutants caught" + (f"; survived: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
