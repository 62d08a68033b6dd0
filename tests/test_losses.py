"""Every loss pinned against a value worked out by hand, plus the invariants it must keep."""

import math

import pytest
import torch

from attnkd.losses import LOSSES, LossConfig, attn_kl_loss, ce_loss, kd_loss


def test_ce_matches_hand_value():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    # -log softmax: row 0: log(1 + e^-2); row 1: log 2
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert ce_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_ce_averages_over_gold_rows_only():
    """Label -1 (an unlabelled or transfer-set row) adds nothing; a batch of such rows gives 0."""
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]], requires_grad=True)
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2  # the two gold rows, as above
    assert ce_loss(logits, torch.tensor([0, 1, -1])).item() == pytest.approx(expected, abs=1e-6)
    none = ce_loss(logits, torch.tensor([-1, -1, -1]))
    none.backward()
    assert none.item() == 0.0 and logits.grad.abs().sum() == 0


def test_kd_matches_hand_value():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[2.0, 0.0]])
    T = 2.0
    p = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]  # softmax(t / T)
    kl = sum(pi * math.log(pi / 0.5) for pi in p)  # student is uniform
    assert kd_loss(s, t, T).item() == pytest.approx(T**2 * kl, abs=1e-6)


def test_kd_is_zero_on_equal_logits_and_positive_otherwise():
    x = torch.randn(4, 5)
    assert kd_loss(x, x.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(x, torch.randn(4, 5), 3.0).item() > 0


def _maps(b, h, t, lengths, seed=0):
    """Random attention maps that are valid softmax rows over each example's real keys."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, t, t, generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    scores = scores.masked_fill(~mask[:, None, None, :].bool(), float("-inf"))
    return torch.softmax(scores, dim=-1), mask


def test_attn_kl_matches_hand_value():
    # one example, one head, two real tokens
    a_t = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]]]])
    a_s = torch.tensor([[[[0.25, 0.75], [0.9, 0.1]]]])
    mask = torch.ones(1, 2, dtype=torch.long)
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    expected = (row0 + 0.0) / 2  # mean over 2 query rows and 1 head
    assert attn_kl_loss(a_s, a_t, mask).item() == pytest.approx(expected, abs=1e-6)


def test_attn_kl_averages_over_heads():
    """Two heads, the first as above, the second equal on both sides: half the one-head value."""
    a_t = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]], [[0.3, 0.7], [0.6, 0.4]]]])  # (1, 2, 2, 2)
    a_s = torch.tensor([[[[0.25, 0.75], [0.9, 0.1]], [[0.3, 0.7], [0.6, 0.4]]]])
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert attn_kl_loss(a_s, a_t, torch.ones(1, 2, dtype=torch.long)).item() == pytest.approx(row0 / 4, abs=1e-6)  # 2 heads x 2 rows


def test_attn_kl_zero_on_equal_maps():
    a, mask = _maps(2, 3, 5, [5, 3])
    assert attn_kl_loss(a, a.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)


def test_attn_kl_ignores_masked_positions():
    a_s, mask = _maps(2, 3, 6, [6, 4], seed=1)
    a_t, _ = _maps(2, 3, 6, [6, 4], seed=2)
    base = attn_kl_loss(a_s, a_t, mask)
    # garbage in padded query rows and padded key columns of example 1 must not matter
    a_t2, a_s2 = a_t.clone(), a_s.clone()
    a_t2[1, :, 4:, :] = 0.7
    a_s2[1, :, 4:, :] = 0.01
    a_t2[1, :, :, 4:] = 0.3
    assert attn_kl_loss(a_s2, a_t2, mask).item() == pytest.approx(base.item(), abs=1e-6)


def test_attn_kl_is_invariant_to_padding_length():
    a_s, mask = _maps(1, 2, 4, [4], seed=3)
    a_t, _ = _maps(1, 2, 4, [4], seed=4)
    pad = lambda a: torch.nn.functional.pad(a, (0, 3, 0, 3))  # T 4 -> 7, zeros
    mask7 = torch.nn.functional.pad(mask, (0, 3))
    assert attn_kl_loss(pad(a_s), pad(a_t), mask7).item() == pytest.approx(attn_kl_loss(a_s, a_t, mask).item(), abs=1e-6)


@pytest.mark.parametrize("name", ["kd", "attn_kl"])
def test_gradients_reach_the_student_only(name):
    if name == "kd":
        s, t = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
        loss = LOSSES[name].fn({"logits": s}, {"logits": t}, None, LossConfig(temperature=2.0))
    else:
        a_s, mask = _maps(2, 2, 4, [4, 2], seed=5)
        a_t, _ = _maps(2, 2, 4, [4, 2], seed=6)
        s, t = a_s.requires_grad_(), a_t.requires_grad_()
        loss = LOSSES[name].fn({"attn": s}, {"attn": t}, mask, LossConfig())
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_method_weights_are_the_registry():
    from attnkd.params import MethodWeights

    assert list(MethodWeights.model_fields) == list(LOSSES)


def test_every_registered_loss_has_a_golden_value_test():
    """Adding a loss = one function, one registry entry and one test named
    test_<name>_matches_hand_value... pinning it to a value worked out by hand."""
    import sys

    here = sys.modules[__name__]
    for name in LOSSES:
        assert [t for t in dir(here) if t.startswith(f"test_{name}_matches_hand_value")], f"no golden-value test for {name}"


from attnkd.losses import at_map_loss, attn_mse_loss, hidden_mse_loss, qkv_relation_loss, relation_kl_loss


def test_attn_mse_matches_hand_value_and_ignores_padding():
    a_s = torch.tensor([[[[0.25, 0.75], [1.0, 0.0]]]])
    a_t = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])
    mask = torch.ones(1, 2, dtype=torch.long)
    expected = (0.25**2 + 0.25**2) / 4  # 4 real (q, k) entries, 1 head
    assert attn_mse_loss(a_s, a_t, mask).item() == pytest.approx(expected, abs=1e-7)
    pad = lambda a, v: torch.nn.functional.pad(a, (0, 2, 0, 2), value=v)
    mask4 = torch.tensor([[1, 1, 0, 0]])
    assert attn_mse_loss(pad(a_s, 3.0), pad(a_t, -1.0), mask4).item() == pytest.approx(expected, abs=1e-7)
    assert attn_mse_loss(a_s, a_s.clone(), mask).item() == 0.0


def test_attn_mse_averages_over_heads():
    a_t = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]], [[0.2, 0.8], [0.4, 0.6]]]])  # (1, 2 heads, 2, 2)
    a_s = torch.tensor([[[[0.25, 0.75], [1.0, 0.0]], [[0.2, 0.8], [0.4, 0.6]]]])
    expected = (0.25**2 + 0.25**2) / (2 * 4)  # 2 heads x 4 real (q, k) entries
    assert attn_mse_loss(a_s, a_t, torch.ones(1, 2, dtype=torch.long)).item() == pytest.approx(expected, abs=1e-7)


def test_relation_kl_matches_hand_value():
    # one example, 2 tokens, width 2, one relation head: relations softmax(X X^T / sqrt(2))
    x_t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    x_s = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    mask = torch.ones(1, 2, dtype=torch.long)
    r = 1 / math.sqrt(2)
    p_t = [math.exp(r) / (math.exp(r) + 1), 1 / (math.exp(r) + 1)]  # teacher row 0; row 1 mirrored
    # student rows are uniform (all dot products equal)
    kl_row = sum(p * math.log(p / 0.5) for p in p_t)
    assert relation_kl_loss(x_s, x_t, mask, heads=1).item() == pytest.approx(kl_row, abs=1e-6)


# one example, tokens x = [1, 0] (width 1, one relation head, d_r = 1) against a teacher of
# zeros: teacher relation rows are uniform; student row 0 is softmax([1, 0]), row 1 uniform.
# KL(uniform || softmax([1, 0])) = 0.5 * ln(0.25 / (s0 * s1)); averaged over 2 query rows.
_S0 = math.e / (math.e + 1)
_RELATION_KL = 0.5 * math.log(0.25 / (_S0 * (1 - _S0))) / 2  # 0.0600575...


def test_value_relation_matches_hand_value():
    v_s, v_t = torch.tensor([[[1.0], [0.0]]]), torch.zeros(1, 2, 1)
    mask = torch.ones(1, 2, dtype=torch.long)
    loss = LOSSES["value_relation"].fn({"v": v_s}, {"v": v_t}, mask, LossConfig(teacher_heads=1))
    assert loss.item() == pytest.approx(_RELATION_KL, abs=1e-6)


# Two relation heads over width D = 2 (d_r = 1): student tokens [[a, 0], [0, 0]], teacher zeros.
# Head 0 sees [a], [0]: row 0 is softmax([a^2 / sqrt(d_r), 0]) = softmax([a^2, 0]), the rest uniform;
# head 1 sees zeros (uniform). Scaling by sqrt(D) instead would give softmax([a^2 / sqrt(2), 0]).
_A = 1.5
_P0 = math.exp(_A**2) / (math.exp(_A**2) + 1)
_TWO_HEAD_KL = 0.5 * math.log(0.25 / (_P0 * (1 - _P0))) / 4  # one non-zero row of 2 heads x 2 rows
_X2 = torch.tensor([[[_A, 0.0], [0.0, 0.0]]])  # (1, 2, 2)


def test_relation_kl_scales_each_relation_head_by_its_own_width():
    assert relation_kl_loss(_X2, torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=torch.long), heads=2).item() == pytest.approx(_TWO_HEAD_KL, abs=1e-6)


def test_value_relation_matches_hand_value_with_two_heads():
    """MiniLM's value relation splits V into the models' attention heads (here 2)."""
    loss = LOSSES["value_relation"].fn({"v": _X2}, {"v": torch.zeros(1, 2, 2)}, torch.ones(1, 2, dtype=torch.long), LossConfig(teacher_heads=2))
    assert loss.item() == pytest.approx(_TWO_HEAD_KL, abs=1e-6)


def test_qkv_relation_matches_hand_value_with_two_relation_heads():
    """Q-Q differs as above, K-K and V-V agree: a third of the Q-Q value (the mean, not the sum)."""
    other = torch.tensor([[[0.3, -1.0], [2.0, 0.5]]])
    s = {"q": _X2, "k": other, "v": other.clone()}
    t = {"q": torch.zeros(1, 2, 2), "k": other.clone(), "v": other.clone()}
    loss = LOSSES["qkv_relation"].fn(s, t, torch.ones(1, 2, dtype=torch.long), LossConfig(relation_heads=2))
    assert loss.item() == pytest.approx(_TWO_HEAD_KL / 3, abs=1e-6)


def test_qkv_relation_matches_hand_value():
    """Q-Q differs as above, K-K and V-V agree: the mean of the three relations, not their sum."""
    mask = torch.ones(1, 2, dtype=torch.long)
    x = torch.tensor([[[1.0], [0.0]]])
    s = {"q": x, "k": x.clone(), "v": x.clone()}
    t = {"q": torch.zeros(1, 2, 1), "k": x.clone(), "v": x.clone()}
    loss = LOSSES["qkv_relation"].fn(s, t, mask, LossConfig(relation_heads=1))
    assert loss.item() == pytest.approx(_RELATION_KL / 3, abs=1e-6)


def test_relations_allow_different_widths_and_are_zero_on_equal_inputs():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    x_t = torch.randn(2, 4, 12)
    assert relation_kl_loss(x_t.clone(), x_t, mask, heads=3).item() == pytest.approx(0.0, abs=1e-6)
    x_s = torch.randn(2, 4, 6)  # narrower student, same number of relation heads
    assert relation_kl_loss(x_s, x_t, mask, heads=3).item() > 0
    qkv_t = {k: torch.randn(2, 4, 12) for k in "qkv"}
    assert qkv_relation_loss({k: v.clone() for k, v in qkv_t.items()}, qkv_t, mask, 4).item() == pytest.approx(0.0, abs=1e-6)


def test_relation_kl_ignores_padded_tokens():
    torch.manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    x_s, x_t = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    base = relation_kl_loss(x_s, x_t, mask, 2).item()
    x_s2, x_t2 = x_s.clone(), x_t.clone()
    x_s2[:, 3:] = 50.0
    x_t2[:, 3:] = -7.0
    assert relation_kl_loss(x_s2, x_t2, mask, 2).item() == pytest.approx(base, abs=1e-6)
    assert relation_kl_loss(x_s[:, :3], x_t[:, :3], mask[:, :3], 2).item() == pytest.approx(base, abs=1e-6)


def test_at_map_matches_hand_value_and_is_width_free():
    # energies: student [1, 1] -> [r, r]; teacher [4, 0] -> [1, 0], r = 1/sqrt(2)
    h_s = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # width 3
    h_t = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])  # width 2
    mask = torch.ones(1, 2, dtype=torch.long)
    r = 1 / math.sqrt(2)
    expected = (r - 1) ** 2 + r**2
    assert at_map_loss(h_s, h_t, mask).item() == pytest.approx(expected, abs=1e-6)
    assert at_map_loss(h_t * 3, h_t, mask).item() == pytest.approx(0.0, abs=1e-7)  # scale-free
    padded = torch.nn.functional.pad(h_s, (0, 0, 0, 2), value=9.0)
    assert at_map_loss(padded, torch.nn.functional.pad(h_t, (0, 0, 0, 2)), torch.tensor([[1, 1, 0, 0]])).item() == pytest.approx(expected, abs=1e-6)


def test_hidden_mse_matches_hand_value_with_and_without_projection():
    h_s = torch.tensor([[[1.0, 2.0], [5.0, 5.0]]])
    h_t = torch.tensor([[[0.0, 2.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 0]])  # only the first token is real
    assert hidden_mse_loss(h_s, h_t, mask).item() == pytest.approx((1.0 + 0.0) / 2)
    proj = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    h_t3 = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]])
    assert hidden_mse_loss(h_s, h_t3, mask, proj).item() == pytest.approx(9.0 / 3)  # (3 - 0)^2 over 3 dims
    loss = hidden_mse_loss(h_s.requires_grad_(), h_t3.requires_grad_(), mask, proj)
    loss.backward()
    assert proj.weight.grad is not None and h_t3.grad is None


def _inputs(name, pad=0, seed=0, requires_grad=False):
    """Student and teacher inputs of one loss for 2 examples (lengths 4 and 2), padded by `pad`."""
    g = torch.Generator().manual_seed(seed)
    t = 4 + pad
    mask = torch.zeros(2, t, dtype=torch.long)
    mask[0, :4], mask[1, :2] = 1, 1
    keys = ~mask[:, None, None, :].bool()
    def vec(d):
        return torch.randn(2, t, d, generator=g) * mask[:, :, None]
    if name in ("attn_kl", "attn_mse"):
        s, te = (torch.softmax(torch.randn(2, 3, t, t, generator=g).masked_fill(keys, float("-inf")), -1) for _ in range(2))
        extra = ()
    elif name == "qkv_relation":
        s, te = {k: vec(6) for k in "qkv"}, {k: vec(12) for k in "qkv"}
        extra = (3,)
    else:
        s, te = vec(6), vec(12 if name != "value_relation" else 6)
        extra = (3,) if name == "value_relation" else ()
    return s, te, mask, extra


VIEW_KIND = {"attn_kl": "attn", "attn_mse": "attn", "value_relation": "v", "at_map": "hidden", "hidden_mse": "hidden"}


def _call(name, s, te, mask, extra):
    """The loss through the registry's one signature (student view, teacher view, mask, config)."""
    cfg = LossConfig(teacher_heads=extra[0] if extra else 1, relation_heads=extra[0] if extra else 1)
    if name == "hidden_mse":
        torch.manual_seed(0)
        cfg = LossConfig(proj=torch.nn.Linear(6, 12))
    if name == "qkv_relation":
        return LOSSES[name].fn(s, te, mask, cfg)
    return LOSSES[name].fn({VIEW_KIND[name]: s}, {VIEW_KIND[name]: te}, mask, cfg)


TOKEN_LOSSES = ["attn_kl", "attn_mse", "value_relation", "qkv_relation", "at_map", "hidden_mse"]


@pytest.mark.parametrize("name", TOKEN_LOSSES)
def test_every_token_loss_is_invariant_to_padding_length(name):
    def trim(x):  # the same examples, padded by 3 more positions
        if isinstance(x, dict):
            return {k: trim(v) for k, v in x.items()}
        if x.dim() == 4:
            return torch.nn.functional.pad(x, (0, 3, 0, 3))
        return torch.nn.functional.pad(x, (0, 0, 0, 3))
    s, te, mask, extra = _inputs(name)
    base = _call(name, s, te, mask, extra).item()
    padded = _call(name, trim(s), trim(te), torch.nn.functional.pad(mask, (0, 3)), extra).item()
    assert padded == pytest.approx(base, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", TOKEN_LOSSES)
def test_every_token_loss_sends_gradients_to_the_student_only(name):
    s, te, mask, extra = _inputs(name, seed=3)
    leaves = lambda x: list(x.values()) if isinstance(x, dict) else [x]
    for x in leaves(s) + leaves(te):
        x.requires_grad_()
    _call(name, s, te, mask, extra).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in leaves(s))
    assert all(x.grad is None for x in leaves(te))


def test_loss_names_live_only_in_the_registry():
    """No module but losses.py spells a loss's name: methods, checks, the store's plan and the
    objective all derive from LOSSES. (`ce` and `kd` are also the default methods' names in params.)"""
    from conftest import REPO

    for path in sorted((REPO / "src/attnkd").rglob("*.py")):
        if path.name == "losses.py":
            continue
        text = path.read_text()
        for name in LOSSES:
            if name not in ("ce", "kd"):
                assert f'"{name}"' not in text and f"'{name}'" not in text, f"{path.relative_to(REPO)} names the loss {name}"


from attnkd.losses import cls_kl_loss, cls_mse_loss, kd_mse_loss


def test_kd_mse_matches_hand_value():
    """Tang et al.'s logit matching: squared distance summed over outputs, mean over rows."""
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[3.0, -1.0], [0.0, 2.0]])
    assert kd_mse_loss(s, t).item() == pytest.approx(((4 + 1) + 4) / 2, abs=1e-6)


def test_cls_kl_matches_hand_value_and_ignores_padding():
    # example 0: three real tokens; example 1: two real tokens and one padded position whose
    # values (0.5 on the student side) must not count
    row_t = torch.tensor([[0.5, 0.25, 0.25], [0.8, 0.2, 0.0]])
    row_s = torch.tensor([[0.25, 0.25, 0.5], [0.4, 0.1, 0.5]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5)
    kl1 = 0.8 * math.log(0.8 / 0.4) + 0.2 * math.log(0.2 / 0.1)
    assert cls_kl_loss(row_s, row_t, mask).item() == pytest.approx((kl0 + kl1) / 2, abs=1e-6)
    other_s, other_t = row_s.clone(), row_t.clone()
    other_s[1, 2], other_t[1, 2] = 0.9, 0.3  # a padded position, on either side: inert
    assert cls_kl_loss(other_s, other_t, mask).item() == pytest.approx((kl0 + kl1) / 2, abs=1e-6)


def test_cls_mse_matches_hand_value_and_ignores_padding():
    row_t = torch.tensor([[0.5, 0.25, 0.25], [0.8, 0.2, 0.0]])
    row_s = torch.tensor([[0.25, 0.25, 0.5], [0.4, 0.1, 0.5]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    e0 = (0.25**2 + 0 + 0.25**2) / 3  # mean over its 3 real tokens
    e1 = (0.4**2 + 0.1**2) / 2  # over its 2 real tokens: the padded 0.5 does not count
    assert cls_mse_loss(row_s, row_t, mask).item() == pytest.approx((e0 + e1) / 2, abs=1e-6)


@pytest.mark.parametrize("name", ["kd_mse", "cls_kl", "cls_mse"])
def test_row_losses_are_zero_on_equal_inputs_and_send_gradients_to_the_student_only(name):
    g = torch.Generator().manual_seed(7)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    kind = "logits" if name == "kd_mse" else "cls"
    rows = lambda: torch.softmax(torch.randn(2, 4, generator=g).masked_fill(~mask.bool(), float("-inf")), -1)  # noqa: E731
    s, t = rows().requires_grad_(), rows().requires_grad_()
    assert LOSSES[name].fn({kind: s}, {kind: s.detach().clone()}, mask, LossConfig()).item() == pytest.approx(0.0, abs=1e-7)
    loss = LOSSES[name].fn({kind: s}, {kind: t}, mask, LossConfig())
    assert loss.item() > 0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


from attnkd.losses import topk_kd_loss


def test_topk_kd_matches_hand_value_and_ignores_padded_positions():
    """V = 3, top-2 kept: the teacher's tempered top-2 renormalised, the student's full softmax."""
    T = 2.0
    logits_s = torch.tensor([[[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]]])  # (1, 2, 3); position 2 is padding
    ids = torch.tensor([[[0, 1], [2, 1]]])
    logp_t = torch.log(torch.tensor([[[0.6, 0.3], [0.5, 0.5]]]))  # the teacher's top-2 probabilities at T = 1
    mask = torch.tensor([[1, 0]])
    p = [0.6 ** 0.5 / (0.6 ** 0.5 + 0.3 ** 0.5), 0.3 ** 0.5 / (0.6 ** 0.5 + 0.3 ** 0.5)]  # p^(1/T), renormalised over the two kept
    q = 1 / 3  # the student's uniform softmax
    expected = T**2 * sum(pi * math.log(pi / q) for pi in p)
    assert topk_kd_loss(logits_s, ids, logp_t, mask, T).item() == pytest.approx(expected, abs=1e-6)
    other = logits_s.clone()
    other[0, 1] = torch.tensor([-9.0, 9.0, 3.0])  # the padded position: inert
    assert topk_kd_loss(other, ids, logp_t, mask, T).item() == pytest.approx(expected, abs=1e-6)
    # both positions real: the mean of the two (position 2: p = (0.5, 0.5) on tokens 2 and 1, each
    # of student probability 1 / (e^2 + 2) under softmax([4, 0, 0] / 2))
    second = T**2 * math.log(0.5 * (math.exp(2) + 2))
    assert topk_kd_loss(logits_s, ids, logp_t, torch.tensor([[1, 1]]), T).item() == pytest.approx((expected + second) / 2, abs=1e-5)
    # zero when the student puts all its mass on the top-k in the teacher's tempered proportions
    exact = torch.tensor([[[math.log(p[0]) * T, math.log(p[1]) * T, -1e4], [0.0, 0.0, 0.0]]])
    assert topk_kd_loss(exact, ids, logp_t, mask, T).item() == pytest.approx(0.0, abs=1e-5)


from attnkd.losses import cross_kl_loss


def test_cross_kl_matches_hand_value_masks_padding_and_spares_the_teacher():
    """B = 1, m = 2 target rows (the second padding), n = 3 source keys (the third padding, where
    the teacher's rows hold 0); the teacher has 2 heads, the student 1: rows compare head-averaged."""
    t = torch.tensor([[[[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]], [[0.7, 0.3, 0.0], [0.2, 0.2, 0.6]]]], requires_grad=True)  # (1, 2, 2, 3)
    s = torch.tensor([[[[0.25, 0.75, 0.0], [0.3, 0.3, 0.4]]]], requires_grad=True)  # (1, 1, 2, 3)
    target_mask = torch.tensor([[1, 0]])
    p = [0.6, 0.4]  # the teacher's first row averaged over its heads
    expected = p[0] * math.log(0.6 / 0.25) + p[1] * math.log(0.4 / 0.75)
    loss = LOSSES["cross_kl"].fn({"cross": s}, {"cross": t}, target_mask, LossConfig())
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    s2 = s.detach().clone()
    s2[0, 0, 1] = torch.tensor([0.9, 0.05, 0.05])  # the padded target row
    s2[0, 0, 0] = torch.tensor([0.2, 0.6, 0.2])  # mass on the padded source key: only the real keys' ratios count
    expected2 = p[0] * math.log(0.6 / 0.2) + p[1] * math.log(0.4 / 0.6)
    assert cross_kl_loss(s2, t, target_mask).item() == pytest.approx(expected2, abs=1e-6)
    assert cross_kl_loss(t.detach().mean(1, keepdim=True), t, torch.tensor([[1, 1]])).item() == pytest.approx(0.0, abs=1e-6)
    two = (expected + sum(a * math.log(a / b) for a, b in zip([0.15, 0.15, 0.7], [0.3, 0.3, 0.4]))) / 2
    assert cross_kl_loss(s, t, torch.tensor([[1, 1]])).item() == pytest.approx(two, abs=1e-6)  # both rows real: their mean
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_seq_kd_matches_hand_value_on_the_teachers_tokens():
    """The cross-entropy of ce, its targets the teacher's translation tokens (-1: padding)."""
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    teacher_tokens = torch.tensor([0, 1, -1])
    expected = -(math.log(math.exp(2) / (math.exp(2) + 2)) + math.log(math.e / (math.e + 2))) / 2
    assert LOSSES["seq_kd"].fn({"logits": logits}, {"labels": teacher_tokens}, None, LossConfig()).item() == pytest.approx(expected, abs=1e-6)
    assert LOSSES["seq_kd"].teacher_targets and LOSSES["seq_kd"].gold and not LOSSES["ce"].teacher_targets


def test_ce_with_label_smoothing_matches_hand_value():
    """eps = 0.1 over C = 3: (1 - eps) (-log q[y]) + eps * mean_c (-log q[c]); rows without a label add nothing."""
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    logq = torch.log_softmax(logits[0], -1)
    expected = 0.9 * -logq[0].item() + 0.1 * -logq.mean().item()
    cfg = LossConfig(label_smoothing=0.1)
    assert LOSSES["ce"].fn({"logits": logits}, {"labels": torch.tensor([0, -1])}, None, cfg).item() == pytest.approx(expected, abs=1e-6)
    assert LOSSES["ce"].fn({"logits": logits[:1]}, {"labels": torch.tensor([0])}, None, LossConfig()).item() == pytest.approx(-logq[0].item(), abs=1e-6)


def test_enc_kl_matches_hand_value_over_the_source_tokens():
    """An encoder's (B, H, n, n) self-attention: B = 1, n = 3 with the third token padding; the
    registry entry reads the "enc" maps, and its mask (the source's) picks the query rows."""
    t = torch.tensor([[[[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.3, 0.3, 0.4]]]])  # (1, 1, 3, 3)
    s = torch.tensor([[[[0.25, 0.75, 0.0], [0.5, 0.5, 0.0], [0.1, 0.1, 0.8]]], [[[0.25, 0.75, 0.0], [0.5, 0.5, 0.0], [0.1, 0.1, 0.8]]]]).transpose(0, 1)  # (1, 2, 3, 3): 2 equal heads
    rows = [0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75), 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)]
    got = LOSSES["enc_kl"].fn({"enc": s}, {"enc": t}, torch.tensor([[1, 1, 0]]), LossConfig())
    assert got.item() == pytest.approx(sum(rows) / 2, abs=1e-6)
    assert LOSSES["enc_kl"].source_queries and not LOSSES["cross_kl"].source_queries and not LOSSES["dec_kl"].source_queries


def test_dec_kl_matches_hand_value_over_the_causal_target_rows():
    """A decoder's causal (B, H, m, m) self-attention: the first row attends to itself only (KL 0
    when both do), the second over two tokens; a padded third target row is left out."""
    t = torch.tensor([[[[1.0, 0.0, 0.0], [0.8, 0.2, 0.0], [0.2, 0.3, 0.5]]]])  # (1, 1, 3, 3)
    s = torch.tensor([[[[1.0, 0.0, 0.0], [0.4, 0.6, 0.0], [0.6, 0.2, 0.2]]]])
    expected = (0.0 + 0.8 * math.log(0.8 / 0.4) + 0.2 * math.log(0.2 / 0.6)) / 2
    assert LOSSES["dec_kl"].fn({"dec": s}, {"dec": t}, torch.tensor([[1, 1, 0]]), LossConfig()).item() == pytest.approx(expected, abs=1e-6)



from attnkd.losses import map_kl_loss, map_mse_loss

# B = 1, 2 heads, m = 2 query rows (the second padding), n = 3 keys (the third padding); the same
# maps serve every kind (cross-attention, encoder and decoder self-attention), each read from its view
MAP_T = torch.tensor([[[[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]], [[0.7, 0.3, 0.0], [0.2, 0.2, 0.6]]]])  # (1, 2, 2, 3)
MAP_S = torch.tensor([[[[0.25, 0.75, 0.0], [0.3, 0.3, 0.4]], [[0.5, 0.5, 0.0], [0.9, 0.05, 0.05]]]])
MAP_MASK = torch.tensor([[1, 0]])
HAND = {  # per head: the mean of each head's KL / squared row distance; head-averaged: the same on the mean maps
    "kl_heads": (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75) + 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5)) / 2,
    "mse_heads": ((0.25**2 + 0.25**2) + (0.2**2 + 0.2**2)) / 2,
    "mse": (0.6 - 0.375) ** 2 + (0.4 - 0.625) ** 2,  # the heads' mean rows: teacher (0.6, 0.4), student (0.375, 0.625)
}


def _map_case(name: str) -> None:
    kind, loss = name.split("_", 1)
    got = LOSSES[name].fn({kind: MAP_S}, {kind: MAP_T}, MAP_MASK, LossConfig(student_heads=2, teacher_heads=2))
    assert got.item() == pytest.approx(HAND[loss], abs=1e-6)
    assert LOSSES[name].source_queries == (kind == "enc") and LOSSES[name].reads(LossConfig()) == (kind,)


def test_cross_kl_heads_matches_hand_value():
    _map_case("cross_kl_heads")


def test_cross_mse_matches_hand_value():
    _map_case("cross_mse")


def test_cross_mse_heads_matches_hand_value():
    _map_case("cross_mse_heads")


def test_enc_kl_heads_matches_hand_value():
    _map_case("enc_kl_heads")


def test_enc_mse_matches_hand_value():
    _map_case("enc_mse")


def test_enc_mse_heads_matches_hand_value():
    _map_case("enc_mse_heads")


def test_dec_kl_heads_matches_hand_value():
    _map_case("dec_kl_heads")


def test_dec_mse_matches_hand_value():
    _map_case("dec_mse")


def test_dec_mse_heads_matches_hand_value():
    _map_case("dec_mse_heads")


def test_map_losses_leave_padded_rows_inert_spare_the_teacher_and_need_equal_heads_per_head():
    s, t = MAP_S.clone().requires_grad_(), MAP_T.clone().requires_grad_()
    other = MAP_S.clone()
    other[0, :, 1] = torch.tensor([1.0, 0.0, 0.0])  # the padded row: inert
    assert map_kl_loss(other, t, MAP_MASK).item() == pytest.approx(HAND["kl_heads"], abs=1e-6)
    assert map_mse_loss(other, t, MAP_MASK).item() == pytest.approx(HAND["mse_heads"], abs=1e-6)
    assert map_mse_loss(s, t, torch.tensor([[1, 1]])).item() > HAND["mse_heads"]  # the second row counts once real
    (map_kl_loss(s, t, MAP_MASK) + map_mse_loss(s, t, MAP_MASK)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    with pytest.raises(ValueError, match="equal head counts"):
        map_kl_loss(s[:, :1], t, MAP_MASK)
    cfg = LossConfig(student_heads=2, teacher_heads=4)
    assert "need equal head counts" in LOSSES["dec_kl_heads"].check(cfg) and LOSSES["dec_kl"].check(cfg) is None and LOSSES["dec_mse"].check(cfg) is None
