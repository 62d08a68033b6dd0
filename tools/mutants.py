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
NER_TESTS = ("tests/test_ner.py",)


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


def group(file: str, tests: tuple[str, ...], *changes: tuple[str, str, str]) -> list[Mutant]:
    """The mutants of one file, each (name, old text, new text), noticed by the same tests."""
    return [Mutant(name, file, old, new, tests) for name, old, new in changes]


MUTANTS = [
    # the store and the layer convention
    *group("src/attnkd/models.py", STORE_TESTS,
           ("attn_from_the_layer_below", "return out.attentions[layer - 1]  # (B, H, T, T)", "return out.attentions[max(layer - 2, 0)]  # (B, H, T, T)"),
           ("hidden_from_the_layer_below", "return out.hidden_states[layer]", "return out.hidden_states[layer - 1]"),
           ("qkv_captured_from_the_layer_below", "attn = model.bert.encoder.layer[l - 1].attention.self",
            "attn = model.bert.encoder.layer[max(l - 2, 0)].attention.self")),
    *group("src/attnkd/signals.py", STORE_TESTS,
           ("store_writes_zero_qkv_and_scores", "x = tensors[(kind, l)].cpu().numpy()",
            "x = tensors[(kind, l)].cpu().numpy() * (kind not in ('q', 'k', 'v', 'scores'))"),
           ("store_writes_zeros", "x = tensors[(kind, l)].cpu().numpy()", "x = tensors[(kind, l)].cpu().numpy() * 0"),
           ("store_writes_zero_logits", "x = value.cpu().numpy()", "x = value.cpu().numpy() * 0")),
    # losses: heads, scaling, reductions
    *group("src/attnkd/losses.py", LOSS_TESTS,
           ("kd_without_t2", 'reduction="batchmean") * temperature**2', 'reduction="batchmean")'),
           ("attn_kl_sums_heads", "per_example = (kl_rows * queries).sum((1, 2)) / (queries.sum((1, 2)) * attn_s.shape[1])", "per_example = (kl_rows * queries).sum((1, 2)) / queries.sum((1, 2))"),
           ("attn_mse_sums_heads", "/ (pair.sum((1, 2, 3)) * attn_s.shape[1])", "/ pair.sum((1, 2, 3))"),
           ("relation_scaled_by_sqrt_width", "xh @ xh.transpose(-1, -2) / xh.shape[-1] ** 0.5", "xh @ xh.transpose(-1, -2) / x.shape[-1] ** 0.5"),
           ("qkv_relation_sums_the_three", 'for k in ("q", "k", "v")]).mean()', 'for k in ("q", "k", "v")]).sum()'),
           ("value_relation_one_head", 'value_relation_loss(s["v"], t["v"], mask, cfg.teacher_heads)', 'value_relation_loss(s["v"], t["v"], mask, 1)'),
           ("attn_kl_keeps_padded_queries", "queries = mask[:, None, :].float()  # (B, 1, T)",
            "queries = torch.ones_like(mask[:, None, :]).float()  # (B, 1, T)")),
    *group("src/attnkd/losses.py", ("tests/test_objective.py",),
           ("relation_heads_checked_on_the_student_only", 'for side, width in (("student", cfg.student_width), ("teacher", cfg.teacher_width)):',
            'for side, width in (("student", cfg.student_width),):')),
    # the recurrent family and its losses
    *group("src/attnkd/models.py", ("tests/test_objective.py", "tests/test_recurrent.py"),
           ("cls_row_of_the_last_query", "return out.attentions[layer - 1][:, :, 0, :].mean(1)", "return out.attentions[layer - 1][:, :, -1, :].mean(1)"),
           ("cls_row_of_the_first_head", "return out.attentions[layer - 1][:, :, 0, :].mean(1)", "return out.attentions[layer - 1][:, 0, 0, :]")),
    *group("src/attnkd/students/lstm.py", ("tests/test_recurrent.py",),
           ("bilstm_pools_over_padding", "pooling = torch.softmax(scores.masked_fill(~mask.bool(), torch.finfo(scores.dtype).min), dim=-1)",
            "pooling = torch.softmax(scores, dim=-1)"),
           ("bilstm_unpacked", "h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=input_ids.shape[1])",
            "h = self.lstm(emb)[0]")),
    *group("src/attnkd/losses.py", ("tests/test_losses.py", "tests/test_recurrent.py"),
           ("cls_kl_reads_the_teachers_padded_keys", "p_t = row_t.detach().float().masked_fill(~keys, 0.0)  # (B, T)", "p_t = row_t.detach().float()  # (B, T)"),
           ("cls_mse_sums_tokens", "return ((((row_s.float() - row_t.detach().float()) ** 2) * m).sum(-1) / m.sum(-1)).mean()",
            "return ((((row_s.float() - row_t.detach().float()) ** 2) * m).sum(-1)).mean()"),
           ("kd_mse_means_outputs", "return ((logits_s.float() - logits_t.detach().float()) ** 2).sum(-1).mean()",
            "return ((logits_s.float() - logits_t.detach().float()) ** 2).mean()")),
    *group("src/attnkd/metrics.py", ("tests/test_recurrent.py",),
           ("agreement_pooling_against_the_teachers_first_layer", 'layer_tensor("cls", t_layer, out_t, {})', 'layer_tensor("cls", 1, out_t, {})')),
    # few labels and the transfer set
    *group("pipeline/augment.py", ("tests/test_transfer.py",),
           ("transfer_rows_get_a_gold_label", "[data.UNLABELLED] * len(out_t)", "[0] * len(out_t)")),
    *group("pipeline/teacher.py", ("tests/test_transfer.py",),
           ("teacher_trains_on_unlabelled_rows", "if not train.labelled.all():", "if False:")),
    *group("src/attnkd/augment.py", ("tests/test_transfer.py",),
           ("mask_rate_doubled", "if x < ap.mask_p:", "if x < 2 * ap.mask_p:"),
           ("neighbour_is_the_word_itself", "sims[torch.arange(len(chunk)), rows] = -2.0  # not itself", "pass")),
    *group("src/attnkd/distillation.py", ("tests/test_transfer.py",),
           ("ce_trains_on_transfer_rows", "return training if self.reads_teacher else", "return training if True else"),
           ("gold_steps_ignored", 'if gold_steps == "epochs" or', "if True or")),
    # statistics
    *group("src/attnkd/stats.py", STATS_TESTS,
           ("bootstrap_resamples_seeds_only", "rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start)", "np.ones((stop - start, n))"),
           ("bootstrap_resamples_examples_only", "seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=samples)",
            "seed_counts = np.ones((samples, n_seeds))"),
           ("bootstrap_90_percent_interval", "np.quantile(deltas, [0.025, 0.975])", "np.quantile(deltas, [0.05, 0.95])"),
           ("corpus_bootstrap_pools_the_seeds", "np.mean(statistic(a.sum(1)) - statistic(b.sum(1)))", "statistic(a.sum((0, 1))) - statistic(b.sum((0, 1)))"),
           ("bootstrap_one_sided_p", "np.abs(deltas - observed) >= abs(observed) - 1e-12", "np.sign(observed) * (deltas - observed) >= abs(observed) - 1e-12")),
    *group("src/attnkd/stats.py", ("tests/test_translation.py::test_one_seeds_paired_bootstrap_agrees_with_sacrebleus_paired_test",),
           ("corpus_bootstrap_p_from_the_unshifted_differences", "np.abs(deltas - observed) >= abs(observed) - 1e-12", "np.abs(deltas) >= abs(observed) - 1e-12")),
    *group("src/attnkd/tasks/classification/scores.py", STATS_TESTS,
           ("ece_signed_gap", "abs(correct[in_bin].mean() - conf[in_bin].mean())", "(conf[in_bin].mean() - correct[in_bin].mean())"),
           ("ece_unweighted_bins", "ece += in_bin.mean() * abs(", "ece += 1 / len(np.unique(which)) * abs(")),
    # SQuAD scores, windows and answers
    *group("src/attnkd/tasks/squad/reading.py", SQUAD_TESTS,
           ("squad_keeps_articles", 'text = re.sub(r"\\b(a|an|the)\\b", " ", text)', "text = text"),
           ("squad_f1_counts_repeated_tokens", "common = sum((collections.Counter(p) & collections.Counter(g)).values())",
            "common = len([t for t in p if t in g])"),
           ("squad_answer_start_one_token_late", "start = next(i for i in inside if offsets[i][1] > a0)",
            "start = next(i for i in inside if offsets[i][1] > a0) + 1"),
           ("squad_answer_length_unchecked", " or e - s + 1 > max_answer_tokens", ""),
           ("squad_span_rows_mask_cls", "allowed[:, 0] = True  # [CLS]", "allowed[:, 0] = False  # [CLS]"),
           ("squad_span_rows_keep_the_question", "allowed = (token_type_ids.bool() & attention_mask.bool()).clone()",
            "allowed = attention_mask.bool().clone()")),
    *group("src/attnkd/tasks/ner/conll.py", NER_TESTS,
           ("ner_tag_on_the_last_sub_token",
            "        starts.append(len(ids))\n        ids += p\n        labels += [tag] + [IGNORE if later is None else later.get(tag, tag)] * (len(p) - 1)",
            "        starts.append(len(ids) + len(p) - 1)\n        ids += p\n        labels += [IGNORE if later is None else later.get(tag, tag)] * (len(p) - 1) + [tag]"),
           ("ner_span_right_with_the_wrong_type", "g, p = entities(gold), entities(predicted)", "g, p = {e[1:] for e in entities(gold)}, {e[1:] for e in entities(predicted)}"),
           ("ner_i_after_o_not_repaired", 'if tag.startswith("I-") and (i == 0 or out[i - 1][2:] != tag[2:]):', 'if False:')),
    *group("src/attnkd/tasks/ner/__init__.py", NER_TESTS,
           ("ner_masked_sub_token_scored", 'predictions[i, np.asarray(ex["word_starts"][i], dtype=np.int64)]', 'predictions[i, np.asarray(ex["word_starts"][i], dtype=np.int64) + 1]'),
           ("ner_masked_sub_tokens_in_the_loss", 'labelled = batch["labels"][:, : raw["logits"].shape[1]] >= 0  # (B, T)', 'labelled = batch["attention_mask"].bool()  # (B, T)')),
    *group("src/attnkd/tasks/squad/__init__.py", SQUAD_TESTS,
           ("squad_answer_from_the_first_window_only", 'offsets_of(ex["offsets"][i])) for i in idx]', 'offsets_of(ex["offsets"][i])) for i in idx[:1]]')),
    # translation: the encoder-decoder's store, targets and losses
    *group("src/attnkd/tasks/translation/store.py", ("tests/test_translation_stages.py",),
           ("pair_store_maps_from_the_layer_below", "x = getattr(out, attr)[l - 1]", "x = getattr(out, attr)[max(l - 2, 0)]"),
           ("pair_store_topk_reversed", 'files["ids"][tok_at[i] : tok_at[i + 1]] = ids', 'files["ids"][tok_at[i] : tok_at[i + 1]] = ids[:, ::-1]'),
           ("pair_store_dec_maps_transposed", "x = getattr(out, attr)[l - 1].float().cpu().numpy()", "x = getattr(out, attr)[l - 1].transpose(-1, -2).float().cpu().numpy()")),
    *group("src/attnkd/objective.py", ("tests/test_translation_stages.py",),
           ("enc_kl_over_the_target_tokens", 'queries = batch["attention_mask"] if loss.source_queries else mask', "queries = mask")),
    *group("src/attnkd/distillation.py", ("tests/test_translation_stages.py",),
           ("seq_kd_trains_on_the_references", "if self.targets is not None:  # the teacher's translations replace the references", "if False:")),
    *group("src/attnkd/checkpoint.py", ("tests/test_resume.py::test_a_checkpoint_from_other_code_is_not_resumed",),
           ("checkpoint_key_ignores_the_code", 'identity | {"code": code_digest()}', "identity")),
    *group("src/attnkd/tasks/translation/text.py", ("tests/test_translation_stages.py::test_a_hub_parallel_corpus_prepares_as_its_files_do",),
           ("hub_pairs_reversed", "out[split] = as_parallel(sides[src], sides[tgt], at, empty", "out[split] = as_parallel(sides[tgt], sides[src], at, empty")),
    *group("src/attnkd/tasks/translation/text.py", ("tests/test_translation.py",),
           ("bleu_smoothing_halves_once", "zeros = np.cumsum(correct == 0, axis=-1)", "zeros = (correct == 0).astype(float)")),
    *group("src/attnkd/tasks/translation/__init__.py", ("tests/test_translation_stages.py",),
           ("evaluate_beam_ignored", "beam=self.beam, batch_size=batch_size", "beam=1, batch_size=batch_size")),
    *group("src/attnkd/tasks/translation/__init__.py", ("tests/test_translation_stages.py",),
           ("word_kd_from_probabilities", '"topk_logp": raw["topk_logp"][real]}', '"topk_logp": raw["topk_logp"][real].exp()}')),
    *group("src/attnkd/losses.py", ("tests/test_losses.py",),
           ("cross_kl_keeps_padded_targets", "queries = mask.float()  # (B, m)", "queries = torch.ones_like(mask).float()  # (B, m)"),
           ("label_smoothing_ignored", "return F.cross_entropy(logits_s[gold], labels[gold], label_smoothing=smoothing)", "return F.cross_entropy(logits_s[gold], labels[gold])"),
           ("map_kl_heads_averaged", "return map_kl_loss(a_s, a_t, mask) if per_head else", "return cross_kl_loss(a_s, a_t, mask) if per_head else"),
           ("map_mse_mean_over_keys", "sq_rows = ((attn_s.float() - attn_t.detach().float()) ** 2).sum(-1)", "sq_rows = ((attn_s.float() - attn_t.detach().float()) ** 2).mean(-1)"),
           ("map_mse_heads_unaveraged", "a_s, a_t = a_s.float().mean(1, keepdim=True), a_t.float().mean(1, keepdim=True)", "a_s, a_t = a_s.float(), a_t.float()")),
    # the store's size budget: what it leaves out, the teacher computes in distill
    *group("src/attnkd/signals.py", ("tests/test_objective.py",),
           ("store_budget_ignored", "if total + size <= max_bytes:", "if True:")),
    # per-token outputs (span logits, token class distributions): ragged rows in their place
    *group("src/attnkd/signals.py", ("tests/test_tasks.py",),
           ("token_outputs_read_one_token_late", "x[row, : self.lengths[i]] = arr[self.token_starts[i] : self.token_starts[i + 1]]",
            "x[row, 1 : self.lengths[i] + 1] = arr[self.token_starts[i] : self.token_starts[i + 1]][: t - 1]")),
    # tracking: the buffered per-step metrics reach the store when the run closes
    *group("src/attnkd/tracking.py", ("tests/test_tracking.py",),
           ("run_metrics_left_in_the_buffer", "            run.flush()", "            pass")),
    # the package's layering: a generic module that imports the task interface back closes a cycle
    *group("src/attnkd/signals.py", ("tests/test_imports.py",),
           ("import_cycle_through_the_task_interface", "from attnkd.models import raw_outputs", "from attnkd.tasks.base import raw_outputs")),
    *group("src/attnkd/distillation.py", ("tests/test_objective.py",),
           ("over_budget_tensors_read_from_the_store", "return split_wanted(self.wanted, self.live)[0]", "return self.wanted")),
]


def copy_tree(dst: Path, src: Path = REPO) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored), copied into dst; also
    the tests' temporary copy of the repository (tests/conftest.py)."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=src, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in names:
        if (src / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)


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
