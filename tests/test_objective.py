"""Objectives: captured scores are the real pre-softmax scores, and every loss computed from the
signal store equals the same loss with the teacher run online (within fp16 tolerance)."""

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification

from attnkd.data import Split, collate
from attnkd.errors import UserError
from attnkd.losses import LOSSES
from attnkd.models import capture, layer_tensor, load_model
from attnkd.students import build_student
from attnkd.tasks import get_task
from attnkd.objective import Objective, check_compatible, wanted_tensors
from attnkd.params import DistillParams, StudentParams
from attnkd.signals import SignalStore, extract
from conftest import tiny_config

PAIRS = [(2, 1)]
KINDS = ("attn", "scores", "q", "k", "v", "hidden", "cls")


def sharp_teacher() -> BertForSequenceClassification:
    """A tiny teacher with large weights: peaked attention and confident logits, so a loss read from
    a wrong layer or from zeros differs from the right one by far more than fp16 rounding (a
    random-init teacher's near-uniform maps would give losses of 1e-9..1e-4 whatever was read)."""
    torch.manual_seed(0)
    config = tiny_config()
    config.initializer_range = 0.5
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):  # uneven per-token energies, for at_map
                m.weight.normal_(1.0, 0.5)
                m.bias.normal_(0.0, 1.0)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rng = np.random.default_rng(0)
    split = Split([[101, *rng.integers(2000, 5000, size=n).tolist(), 102] for n in (5, 2, 9, 4)], np.array([0, 1, 2, 3]))
    teacher = sharp_teacher()
    out = tmp_path_factory.mktemp("store")
    extract(teacher, split, {kind: [1, 2] for kind in KINDS}, "float16", 2, 0, out, {}, get_task("classification"))
    return split, teacher, SignalStore(out)


def reference(teacher, ids: torch.Tensor, layer: int) -> dict[str, torch.Tensor]:
    """One unpadded example's teacher tensors of a 1-based layer, computed here from HF's outputs and
    the layer's own modules (not through the code under test). ids (1, n)."""
    out = teacher(input_ids=ids, output_attentions=True, output_hidden_states=True)
    attn = teacher.bert.encoder.layer[layer - 1].attention.self
    x = out.hidden_states[layer - 1]  # the layer's input, (1, n, D)
    q, k, v = attn.query(x), attn.key(x), attn.value(x)  # (1, n, D)
    heads = teacher.config.num_attention_heads
    qh, kh = (t.view(1, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k))  # (1, H, n, d)
    scores = qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5
    return {"attn": out.attentions[layer - 1], "cls": out.attentions[layer - 1][:, :, 0, :].mean(1), "scores": scores, "q": q, "k": k, "v": v, "hidden": out.hidden_states[layer], "logits": out.logits}


@torch.no_grad()
def test_the_store_holds_each_layers_own_tensors_to_fp16_precision(setup):
    split, teacher, store = setup
    attn = reference(teacher, torch.tensor([split.input_ids[2]]), 2)["attn"]
    assert attn.max(-1).values.mean() > 0.5  # peaked: a loss between two different layers' maps is far from 0
    idx = np.array([2, 0, 3, 1])
    outputs, stored = store.batch(idx, max(len(split.input_ids[i]) for i in idx))
    for row, i in enumerate(idx):
        n = len(split.input_ids[i])
        for layer in (1, 2):
            ref = reference(teacher, torch.tensor([split.input_ids[i]]), layer)
            for kind in KINDS:
                got = stored[(kind, layer)][row, :, :n, :n] if kind in ("attn", "scores") else stored[(kind, layer)][row, :n]
                torch.testing.assert_close(got, ref[kind][0], rtol=2**-10, atol=1e-5, msg=f"{kind} layer {layer} example {i}")
            torch.testing.assert_close(outputs["logits"][row], ref["logits"][0], rtol=1e-5, atol=1e-5)  # float32


def test_captured_scores_give_the_models_attention(tiny_model_dir):
    model = load_model(tiny_model_dir, get_task("classification")).eval()
    split = Split([[101, 2000, 2001, 102], [101, 102]], np.array([0, 1]))
    b = collate(split, np.array([0, 1]), 0)
    with torch.no_grad(), capture(model, [1, 2], scores=True) as cap:
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_attentions=True)
    keys = b["attention_mask"][:, None, None, :].bool()
    for l in (1, 2):
        probs = torch.softmax(cap[l]["scores"].masked_fill(~keys, float("-inf")), -1)
        assert torch.allclose(probs, out.attentions[l - 1], atol=1e-5)
        assert cap[l]["v"].shape == (2, 4, 32)


CASES = [(n, "probs") for n in LOSSES if n not in ("ce", "value_relation") and LOSSES[n].seq2seq is not True] + [("attn_mse", "scores")]  # encoder losses


@pytest.mark.parametrize("loss, on", CASES)
def test_store_and_online_give_the_same_loss(setup, loss, on):
    """A narrower student (width 16) than the teacher (32), same head count."""
    split, teacher, store = setup
    sp = StudentParams(num_layers=1, hidden_size=16, num_heads=4, intermediate_size=32, init="random")
    dp = DistillParams(attn_mse_on=on, relation_heads=4, head_policy="per_head")
    student = build_student(teacher, sp, PAIRS, seed=0).eval()  # eval: no dropout noise between the two calls
    objective = Objective({loss: 1.0}, PAIRS, dp, sp, teacher.config.hidden_size, teacher.config.num_attention_heads, get_task("classification"))
    idx = np.array([2, 0, 3])
    b = collate(split, idx, 0)
    logits_s, both = store.batch(idx, b["input_ids"].shape[1])
    stored = {key: t for key, t in both.items() if key[1] == 2}
    with torch.no_grad(), capture(teacher, [2], scores=True) as cap:
        out = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_attentions=True, output_hidden_states=True)
    online = {key: layer_tensor(key[0], key[1], out, cap) for key in stored}
    from_store, terms_s = objective(student, b, logits_s, stored)
    from_teacher, _ = objective(student, b, {"logits": out.logits}, online)
    other_layer = {(kind, 2): t for (kind, l), t in both.items() if l == 1}
    wrong, _ = objective(student, b, logits_s, other_layer)
    zeros, _ = objective(student, b, {"logits": torch.zeros_like(logits_s["logits"])}, {k: torch.zeros_like(t) for k, t in stored.items()})
    assert from_store.item() == pytest.approx(from_teacher.item(), rel=1e-3)
    assert zeros.item() != pytest.approx(from_teacher.item(), rel=5e-3)  # 5x the tolerance: it tells signals from zeros
    if LOSSES[loss].per_layer:  # and layer 1's tensors from layer 2's
        assert wrong.item() != pytest.approx(from_teacher.item(), rel=5e-3)
    per_pair = {loss} if not LOSSES[loss].per_layer else {loss, *(f"{loss}/t{t}-s{s}" for t, s in PAIRS)}
    assert set(terms_s) == per_pair
    from_store.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_value_relation_store_equals_online(setup):
    split, teacher, store = setup
    sp = StudentParams(num_layers=1, hidden_size=32, num_heads=4, intermediate_size=32, init="random")
    dp = DistillParams()
    student = build_student(teacher, sp, PAIRS, seed=0).eval()
    objective = Objective({"value_relation": 1.0}, PAIRS, dp, sp, 32, 4, get_task("classification"))
    idx = np.array([1, 2])
    b = collate(split, idx, 0)
    with torch.no_grad(), capture(teacher, [2]) as cap:
        teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    _, stored = store.batch(idx, b["input_ids"].shape[1], {"v": [1, 2]})
    a, _ = objective(student, b, {"logits": torch.zeros(2, 5)}, {("v", 2): stored[("v", 2)]})
    o, _ = objective(student, b, {"logits": torch.zeros(2, 5)}, {("v", 2): cap[2]["v"]})
    wrong, _ = objective(student, b, {"logits": torch.zeros(2, 5)}, {("v", 2): stored[("v", 1)]})
    assert a.item() == pytest.approx(o.item(), rel=1e-3)
    assert wrong.item() != pytest.approx(o.item(), rel=5e-3)


def test_head_policy_and_incompatible_pairs_fail_at_load_time():
    sp = StudentParams(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=32)
    dp = DistillParams()
    with pytest.raises(UserError, match="distill.head_policy: per_head needs equal head counts"):
        check_compatible({"attn_kl": 1.0}, dp, sp, teacher_heads=4, teacher_width=32, task=get_task("classification"))
    check_compatible({"attn_kl": 1.0}, dp.model_copy(update={"head_policy": "average"}), sp, teacher_heads=4, teacher_width=32, task=get_task("classification"))
    with pytest.raises(UserError, match="value_relation"):
        check_compatible({"value_relation": 1.0}, dp, sp, teacher_heads=4, teacher_width=32, task=get_task("classification"))
    with pytest.raises(UserError, match="distill.relation_heads: 5 does not divide the student width 32"):
        check_compatible({"qkv_relation": 1.0}, dp.model_copy(update={"relation_heads": 5}), sp, teacher_heads=4, teacher_width=40, task=get_task("classification"))
    with pytest.raises(UserError, match="distill.relation_heads: 16 does not divide the teacher width 40"):
        check_compatible({"qkv_relation": 1.0}, dp.model_copy(update={"relation_heads": 16}), sp, teacher_heads=4, teacher_width=40, task=get_task("classification"))


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
    objective = Objective(weights, PAIRS, dp, sp, 32, 4, get_task("classification"))
    wanted = wanted_tensors([weights], PAIRS, "probs")
    idx = np.array([0, 1, 2, 3])
    b = collate(split, idx, 0)
    s_total, s_terms = objective(student, b, *store.batch(idx, b["input_ids"].shape[1], wanted))
    o_total, o_terms = objective(student, b, *online_batch(teacher, b, wanted, get_task("classification")))
    assert {k for k in s_terms if "/" not in k} == set(weights)
    for k in weights:
        assert s_terms[k].item() == pytest.approx(o_terms[k].item(), rel=1e-3), k
        assert s_terms[k].item() > 1e-3, k  # far from 0: the tolerance above is a real one
    assert s_total.item() == pytest.approx(o_total.item(), rel=1e-3)


def test_a_store_over_its_budget_leaves_the_rest_to_the_teacher_with_the_same_loss(setup, tmp_path):
    from attnkd.distillation import DistillRun
    from attnkd.signals import offsets, split_wanted, within_budget
    from attnkd.tasks import get_task

    split, teacher, full = setup
    planned = {"attn": [1, 2], "hidden": [1, 2]}
    one_layer = int(offsets(split.lengths, "attn", 4, 32)[-1]) * 2  # fp16 bytes of one layer's maps
    stored, online = within_budget(split.lengths, planned, 4, 32, "float16", one_layer)
    assert stored == {"attn": [1]} and online == {"attn": [2], "hidden": [1, 2]}
    out = tmp_path / "store"
    out.mkdir()
    extract(teacher, split, stored, "float16", 2, 0, out, {"inputs_sha256": "x", "teacher_sha256": "y", "online": online, "max_bytes": one_layer}, get_task("classification"))
    store = SignalStore(out)
    store.require({"attn": [2], "hidden": [1]}, "x", "y")  # left to the teacher: fine
    with pytest.raises(UserError, match="'q' of teacher layers \\[2\\] is not stored"):
        store.require({"q": [2]}, "x", "y")

    weights = {"ce": 0.5, "kd": 0.5, "attn_kl": 1.0}
    sp = StudentParams(num_layers=1, hidden_size=32, num_heads=4, intermediate_size=32, init="random")
    student = build_student(teacher, sp, PAIRS, seed=0).eval()
    objective = Objective(weights, PAIRS, DistillParams(), sp, 32, 4, get_task("classification"))
    wanted = wanted_tensors([weights], PAIRS, "probs")  # attn of layer 2: over the budget
    live = split_wanted(wanted, store.manifest.online)[1]
    assert live == {"attn": [2]}
    run = DistillRun(get_task("classification"), student, objective, store, wanted, PAIRS, None, {}, live, teacher)
    idx = np.array([0, 1, 2, 3])
    b = collate(split, idx, 0)
    total, terms = run.step_loss(student, b, idx)
    ref_total, ref_terms = objective(student, b, *full.batch(idx, b["input_ids"].shape[1], wanted))  # the whole store
    assert terms["attn_kl"].item() == pytest.approx(ref_terms["attn_kl"].item(), rel=1e-3) and terms["attn_kl"].item() > 1e-3
    assert total.item() == pytest.approx(ref_total.item(), rel=1e-3)
