"""Objectives: captured scores are the real pre-softmax scores, and every loss computed from the
signal store equals the same loss with the teacher run online (within fp16 tolerance)."""

import numpy as np
import pytest
import torch

from attnkd.data import Split, collate
from attnkd.errors import UserError
from attnkd.losses import LOSSES
from attnkd.models import build_student, capture, layer_tensor, load_model
from attnkd.objective import Objective, check_compatible, wanted_tensors
from attnkd.params import DistillParams, StudentParams
from attnkd.signals import SignalStore, extract

PAIRS = [(2, 1)]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    rng = np.random.default_rng(0)
    split = Split([[101, *rng.integers(2000, 5000, size=n).tolist(), 102] for n in (5, 2, 9, 4)], np.array([0, 1, 2, 3]))
    teacher = load_model(tiny_model_dir).eval()
    out = tmp_path_factory.mktemp("store")
    all_losses = [{name: 1.0 for name in LOSSES}]
    wanted = wanted_tensors(all_losses, PAIRS, "probs") | wanted_tensors(all_losses, PAIRS, "scores")
    extract(teacher, split, wanted, "float16", 2, 0, out, {})
    return split, teacher, SignalStore(out)


def test_captured_scores_give_the_models_attention(tiny_model_dir):
    model = load_model(tiny_model_dir).eval()
    split = Split([[101, 2000, 2001, 102], [101, 102]], np.array([0, 1]))
    b = collate(split, np.array([0, 1]), 0)
    with torch.no_grad(), capture(model, [1, 2], scores=True) as cap:
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_attentions=True)
    keys = b["attention_mask"][:, None, None, :].bool()
    for l in (1, 2):
        probs = torch.softmax(cap[l]["scores"].masked_fill(~keys, float("-inf")), -1)
        assert torch.allclose(probs, out.attentions[l - 1], atol=1e-5)
        assert cap[l]["v"].shape == (2, 4, 32)


CASES = [(n, "probs") for n in LOSSES if n not in ("ce", "value_relation")] + [("attn_mse", "scores")]


@pytest.mark.parametrize("loss, on", CASES)
def test_store_and_online_give_the_same_loss(setup, loss, on):
    """A narrower student (width 16) than the teacher (32), same head count."""
    split, teacher, store = setup
    sp = StudentParams(num_layers=1, hidden_size=16, num_heads=4, intermediate_size=32, init="random")
    dp = DistillParams(attn_mse_on=on, relation_heads=4, head_policy="per_head")
    student = build_student(teacher, sp, PAIRS, seed=0).eval()  # eval: no dropout noise between the two calls
    objective = Objective({loss: 1.0}, PAIRS, dp, sp, teacher.config.hidden_size, teacher.config.num_attention_heads)
    idx = np.array([2, 0, 3])
    b = collate(split, idx, 0)
    logits_s, stored = store.batch(idx, b["input_ids"].shape[1])
    with torch.no_grad(), capture(teacher, [2], scores=True) as cap:
        out = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_attentions=True, output_hidden_states=True)
    online = {key: layer_tensor(key[0], key[1], out, cap) for key in stored}
    from_store, terms_s = objective(student, b, logits_s, stored)
    from_teacher, _ = objective(student, b, {"logits": out.logits}, online)
    assert from_store.item() == pytest.approx(from_teacher.item(), rel=1e-2, abs=1e-3)
    per_pair = {loss} if not LOSSES[loss].per_layer else {loss, *(f"{loss}/t{t}-s{s}" for t, s in PAIRS)}
    assert set(terms_s) == per_pair
    from_store.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_value_relation_store_equals_online(setup):
    split, teacher, store = setup
    sp = StudentParams(num_layers=1, hidden_size=32, num_heads=4, intermediate_size=32, init="random")
    dp = DistillParams()
    student = build_student(teacher, sp, PAIRS, seed=0).eval()
    objective = Objective({"value_relation": 1.0}, PAIRS, dp, sp, 32, 4)
    idx = np.array([1, 2])
    b = collate(split, idx, 0)
    _, stored = store.batch(idx, b["input_ids"].shape[1])
    with torch.no_grad(), capture(teacher, [2]) as cap:
        teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    a, _ = objective(student, b, {"logits": torch.zeros(2, 5)}, stored)
    o, _ = objective(student, b, {"logits": torch.zeros(2, 5)}, {("v", 2): cap[2]["v"]})
    assert a.item() == pytest.approx(o.item(), rel=1e-2, abs=1e-3)


def test_head_policy_and_incompatible_pairs_fail_at_load_time():
    sp = StudentParams(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=32)
    dp = DistillParams()
    with pytest.raises(UserError, match="distill.head_policy: per_head needs equal head counts"):
        check_compatible({"attn_kl": 1.0}, dp, sp, teacher_heads=4)
    check_compatible({"attn_kl": 1.0}, dp.model_copy(update={"head_policy": "average"}), sp, teacher_heads=4)
    with pytest.raises(UserError, match="value_relation"):
        check_compatible({"value_relation": 1.0}, dp, sp, teacher_heads=4)
    with pytest.raises(UserError, match="distill.relation_heads: 5 does not divide"):
        check_compatible({"qkv_relation": 1.0}, dp.model_copy(update={"relation_heads": 5}), sp, teacher_heads=4)


def test_wanted_tensors_are_exactly_what_the_losses_read():
    assert wanted_tensors([{"ce": 1.0}, {"kd": 1.0}], [(3, 1), (6, 2)], "probs") == {}
    assert wanted_tensors([{"attn_kl": 1.0}, {"qkv_relation": 1.0}], [(3, 1), (6, 2)], "probs") == {
        "attn": [3, 6], "k": [3, 6], "q": [3, 6], "v": [3, 6]
    }
    assert wanted_tensors([{"attn_mse": 1.0}], [(6, 2)], "scores") == {"scores": [6]}
    assert wanted_tensors([{"at_map": 1.0, "hidden_mse": 1.0}], [(6, 2)], "probs") == {"hidden": [6]}


def test_online_mode_gives_the_store_losses_for_a_combined_method(setup):
    from attnkd.signals import online_batch

    split, teacher, store = setup
    weights = {"ce": 0.5, "kd": 0.5, "attn_kl": 1.0, "qkv_relation": 1.0, "hidden_mse": 1.0}
    sp = StudentParams(num_layers=1, hidden_size=16, num_heads=4, intermediate_size=32, init="random")
    dp = DistillParams(relation_heads=4)
    student = build_student(teacher, sp, PAIRS, seed=0).eval()
    objective = Objective(weights, PAIRS, dp, sp, 32, 4)
    wanted = wanted_tensors([weights], PAIRS, "probs")
    idx = np.array([0, 1, 2, 3])
    b = collate(split, idx, 0)
    s_total, s_terms = objective(student, b, *store.batch(idx, b["input_ids"].shape[1], wanted))
    o_total, o_terms = objective(student, b, *online_batch(teacher, b, wanted))
    assert {k for k in s_terms if "/" not in k} == set(weights)
    for k in weights:
        assert s_terms[k].item() == pytest.approx(o_terms[k].item(), rel=1e-2, abs=1e-3), k
    assert s_total.item() == pytest.approx(o_total.item(), rel=1e-2)
