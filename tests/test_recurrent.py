"""The BiLSTM student family: built from the teacher, saved and loaded like every model, invariant to
padding, and trained by the same objective (its pooling row against the teacher's [CLS] row)."""

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification

from attnkd.data import Split, collate
from attnkd.errors import UserError
from attnkd.metrics import attention_agreement
from attnkd.models import forward, layer_tensor, load_model
from attnkd.students import build_student
from attnkd.tasks import get_task
from attnkd.objective import Objective, check_compatible, store_plan
from attnkd.params import DistillParams, Params, StudentParams
from attnkd.students.lstm import BiLSTMForSequenceClassification
from attnkd.signals import SignalStore, extract
from test_objective import sharp_teacher

LSTM = StudentParams(family="lstm", num_layers=1, hidden_size=8, embedding_size=16, init="embeddings")


@pytest.fixture(scope="module")
def teacher() -> BertForSequenceClassification:
    return sharp_teacher()  # width 32, 2 layers, 4 heads, 5 labels; peaked attention rows


@pytest.fixture(scope="module")
def split() -> Split:
    rng = np.random.default_rng(0)
    return Split([[101, *rng.integers(2000, 5000, size=n).tolist(), 102] for n in (5, 2, 9, 4)], np.array([0, 1, 2, 3]))


def test_built_from_the_teacher_deterministically(teacher):
    a, b, c = (build_student(teacher, LSTM, [(2, 1)], seed) for seed in (1, 1, 2))
    assert isinstance(a, BiLSTMForSequenceClassification)
    assert a.config.vocab_size == teacher.config.vocab_size and a.config.num_labels == teacher.config.num_labels
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert not torch.equal(a.lstm.weight_ih_l0, c.lstm.weight_ih_l0)
    # init embeddings: the teacher's word embeddings projected onto their top 16 principal directions
    words = teacher.get_input_embeddings().weight.detach()
    centred = words - words.mean(0)
    expected = words @ torch.linalg.svd(centred, full_matrices=False)[2][:16].T
    torch.testing.assert_close(a.embeddings.weight, expected)
    assert torch.equal(c.embeddings.weight, a.embeddings.weight)  # the copy does not depend on the seed
    assert a.embeddings.weight.requires_grad  # train_embeddings defaults to true
    frozen = build_student(teacher, LSTM.model_copy(update={"train_embeddings": False}), [(2, 1)], 1)
    assert not frozen.embeddings.weight.requires_grad


@torch.no_grad()
def test_outputs_and_pooling_do_not_depend_on_padding(teacher, split):
    model = build_student(teacher, LSTM.model_copy(update={"num_layers": 2}), [(2, 1)], 0).eval()
    batch = collate(split, np.arange(4), 0)  # padded to 11 tokens
    out = forward(model, batch, output_attentions=True)
    mask = batch["attention_mask"].bool()
    assert torch.all(out.pooling[~mask] == 0)
    torch.testing.assert_close(out.pooling.sum(-1), torch.ones(4))
    for i in range(4):
        alone = forward(model, collate(split, np.array([i]), 0))  # no padding at all
        n = len(split.input_ids[i])
        torch.testing.assert_close(out.logits[i], alone.logits[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.pooling[i, :n], alone.pooling[0], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out.logits[0], out.logits[1])  # and the inputs do matter


def test_saves_and_loads_like_every_model(teacher, split, tmp_path):
    model = build_student(teacher, LSTM, [(2, 1)], 3).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = load_model(tmp_path, get_task("classification"))
    assert isinstance(loaded, BiLSTMForSequenceClassification)
    batch = collate(split, np.arange(4), 0)
    with torch.no_grad():
        a, b = forward(model, batch), forward(loaded.eval(), batch)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-6)  # same weights; the LSTM kernel may sum in another order
    torch.testing.assert_close(b.pooling, a.pooling, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="family lstm classifies"):
        load_model(tmp_path, get_task("squad"))


def test_pooling_transfer_from_the_store_equals_online_and_trains_the_student(teacher, split, tmp_path):
    extract(teacher, split, {"cls": [1, 2]}, "float16", 2, 0, tmp_path, {}, get_task("classification"))
    store = SignalStore(tmp_path)
    dp = DistillParams()
    pairs = [(2, 1)]
    student = build_student(teacher, LSTM, pairs, 0).eval()
    objective = Objective({"cls_kl": 1.0, "kd_mse": 0.5, "at_map": 1.0}, pairs, dp, LSTM, 32, 4, get_task("classification"))
    idx = np.array([2, 0, 3])
    b = collate(split, idx, 0)
    outputs, stored = store.batch(idx, b["input_ids"].shape[1])
    with torch.no_grad():
        out = forward(teacher, b, output_attentions=True, output_hidden_states=True)
    row = layer_tensor("cls", 2, out, {})  # (B, T) the [CLS] row of layer 2, head-averaged
    torch.testing.assert_close(stored[("cls", 2)], row * b["attention_mask"], rtol=2**-10, atol=1e-5)
    online = {("cls", 2): row, ("hidden", 2): out.hidden_states[2]}
    from_store, terms = objective(student, b, outputs, {("cls", 2): stored[("cls", 2)], ("hidden", 2): out.hidden_states[2]})
    from_teacher, online_terms = objective(student, b, {"logits": out.logits}, online)
    _, wrong_layer = objective(student, b, outputs, {("cls", 2): stored[("cls", 1)], ("hidden", 2): out.hidden_states[2]})
    assert from_store.item() == pytest.approx(from_teacher.item(), rel=1e-3)
    assert terms["cls_kl"].item() == pytest.approx(online_terms["cls_kl"].item(), rel=1e-3)
    assert terms["cls_kl"].item() > 0.05 and wrong_layer["cls_kl"].item() != pytest.approx(online_terms["cls_kl"].item(), rel=5e-3)
    assert set(terms) == {"cls_kl", "kd_mse", "at_map", "cls_kl/t2-s1", "at_map/t2-s1"}
    from_store.backward()
    assert student.lstm.weight_ih_l0.grad.abs().sum() > 0 and student.attn_score.weight.grad.abs().sum() > 0


def test_a_loss_the_family_cannot_read_fails_naming_it():
    with pytest.raises(UserError, match="attn_kl reads attn .*lstm student"):
        check_compatible({"ce": 1.0, "attn_kl": 1.0}, DistillParams(), LSTM, 4, 32, get_task("classification"))
    check_compatible({"ce": 1.0, "kd": 1.0, "kd_mse": 1.0, "cls_kl": 1.0, "cls_mse": 1.0, "at_map": 1.0, "hidden_mse": 1.0}, DistillParams(), LSTM, 4, 32, get_task("classification"))
    teacher_config = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 32}
    params = Params(students={"rnn": LSTM}, distill=DistillParams(students=["rnn"]), methods={"ce": {"ce": 1.0}, "pool": {"ce": 1.0, "cls_kl": 1.0}})
    assert store_plan(params, teacher_config, get_task("classification")) == {"cls": [2]}  # uniform map: its one pooling layer learns from the last teacher layer
    with pytest.raises(UserError, match="students.rnn: family lstm classifies"):
        store_plan(params.model_copy(update={"task": "squad"}), teacher_config, get_task("squad"))
    with pytest.raises(ValueError, match="init must be embeddings or random"):
        StudentParams(family="lstm", init="teacher")


@torch.no_grad()
def test_agreement_compares_the_pooling_row_with_the_teachers_cls_row(teacher, split):
    student = build_student(teacher, LSTM, [(2, 1)], 0).eval()
    got = attention_agreement(teacher, {"rnn": (student, [(2, 1)]), "self": (teacher, [(2, 2)])}, split, 2, 0)
    assert got["self"]["t2-s2"] == pytest.approx(0.0, abs=1e-9)
    js = []
    for i in range(len(split)):
        b = collate(split, np.array([i]), 0)
        p = forward(student, b).pooling[0].double()
        q = forward(teacher, b, output_attentions=True).attentions[1][0, :, 0, :].double().mean(0)
        m = (p + q) / 2
        js.append(0.5 * float((p * (p / m).log2()).sum() + (q * (q / m).log2()).sum()))
    assert got["rnn"]["t2-s1"] > 0.01  # a random student's row is far from a peaked teacher's
    assert got["rnn"]["t2-s1"] == pytest.approx(np.mean(js), rel=1e-5)
