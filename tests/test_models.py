"""The attention conventions the losses rely on, and student construction."""

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification

from attnkd.data import Split, collate
from attnkd.errors import UserError
from attnkd.models import load_model, resolve_init
from attnkd.students import build_student
from attnkd.tasks import get_task
from attnkd.params import StudentParams
from conftest import tiny_config


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config(layers=4)).eval()


def test_eager_attention_rows_sum_to_one_on_real_keys_and_zero_on_padding(tiny_model_dir):
    model = load_model(tiny_model_dir, get_task("classification")).eval()
    split = Split([[101, 2000, 2001, 102], [101, 102]], np.array([0, 1]))
    b = collate(split, np.array([0, 1]), pad_id=0)
    with torch.no_grad():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers
    attn = out.attentions[0]  # (B, H, T, T)
    assert attn.shape == (2, 4, 4, 4)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 4, 4), atol=1e-5)
    assert attn[1, :, :, 2:].abs().max() == 0  # padded keys get no probability


def test_attention_of_an_example_does_not_depend_on_batch_padding(tiny_model_dir):
    model = load_model(tiny_model_dir, get_task("classification")).eval()
    split = Split([[101, 2000, 102], [101, 2000, 2001, 2002, 2003, 102]], np.array([0, 1]))
    with torch.no_grad():
        alone = model(**{k: v for k, v in collate(split, np.array([0]), 0).items() if k != "labels"}, output_attentions=True)
        padded = model(**{k: v for k, v in collate(split, np.array([0, 1]), 0).items() if k != "labels"}, output_attentions=True)
    assert torch.allclose(alone.attentions[1][0], padded.attentions[1][0, :, :3, :3], atol=1e-5)


def test_student_from_teacher_copies_mapped_layers(teacher):
    sp = StudentParams(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, init="teacher")
    student = build_student(teacher, sp, [(2, 1), (4, 2)], seed=0)
    for t, s in [(2, 1), (4, 2)]:
        for (name, p_s), p_t in zip(student.bert.encoder.layer[s - 1].state_dict().items(), teacher.bert.encoder.layer[t - 1].state_dict().values()):
            assert torch.equal(p_s, p_t), name
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert student.config._attn_implementation == "eager"


def test_student_init_is_fixed_by_the_seed_and_embeddings_only_copies_embeddings(teacher):
    sp = StudentParams(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, init="embeddings")
    a, b = build_student(teacher, sp, [(2, 1), (4, 2)], seed=3), build_student(teacher, sp, [(2, 1), (4, 2)], seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(a.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert not torch.equal(a.bert.encoder.layer[0].attention.self.query.weight, teacher.bert.encoder.layer[1].attention.self.query.weight)


def test_copying_layers_needs_equal_width(teacher):
    sp = StudentParams(num_layers=2, hidden_size=16, num_heads=4, intermediate_size=64, init="teacher")
    with pytest.raises(UserError, match="needs hidden_size == 32"):
        build_student(teacher, sp, [(2, 1), (4, 2)], seed=0)
    with pytest.raises(UserError, match="needs hidden_size <= the teacher's 32"):
        build_student(teacher, sp.model_copy(update={"hidden_size": 64, "init": "embeddings"}), [], seed=0)
    assert build_student(teacher, sp.model_copy(update={"init": "random"}), [], seed=0).config.hidden_size == 16


def test_a_narrower_student_gets_the_embeddings_projected_on_their_principal_directions(teacher):
    sp = StudentParams(num_layers=1, hidden_size=16, num_heads=4, intermediate_size=64, init="embeddings")
    student = build_student(teacher, sp, [], seed=0)
    with torch.no_grad():
        w_t, w_s = teacher.bert.embeddings.word_embeddings.weight, student.bert.embeddings.word_embeddings.weight  # (V, 32), (V, 16)
        centred = w_t - w_t.mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        torch.testing.assert_close(w_s, w_t @ vh[:16].T)
        # the projection keeps the top 16 directions: the centred projection holds their variance
        kept = ((w_s - w_s.mean(0)) ** 2).sum() / (centred**2).sum()
        assert kept == pytest.approx(float((s[:16] ** 2).sum() / (s**2).sum()), rel=1e-4) and kept > 16 / 32
        pos_t, pos_s = teacher.bert.embeddings.position_embeddings.weight, student.bert.embeddings.position_embeddings.weight
        torch.testing.assert_close(pos_s, pos_t @ vh[:16].T)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_student_attention_dropout_comes_from_params(teacher, dropout):
    """In training mode the returned attention rows still sum to one only without attention dropout."""
    sp = StudentParams(num_layers=1, hidden_size=32, num_heads=4, intermediate_size=64, attention_dropout=dropout)
    student = build_student(teacher, sp, [(4, 1)], seed=0).train()
    out = student(input_ids=torch.tensor([[101, 2000, 2001, 2002, 2003, 102]]), output_attentions=True)
    rows_are_distributions = torch.allclose(out.attentions[0].sum(-1), torch.ones(1, 4, 6), atol=1e-5)
    assert rows_are_distributions == (dropout == 0.0)


def test_frozen_word_embeddings_stay_the_teachers_through_training(teacher):
    from attnkd.train import make_optimizer, Budget

    sp = StudentParams(num_layers=1, hidden_size=32, num_heads=4, intermediate_size=64, init="embeddings", train_embeddings=False)
    student = build_student(teacher, sp, [(4, 1)], seed=0).train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    opt, _ = make_optimizer(student, Budget(1, 2, 1e-2, 0.01, 0.0, 0, 2, 0), 1)
    student(input_ids=torch.tensor([[101, 2000, 2001, 102]]), labels=torch.tensor([1])).loss.backward()
    opt.step()
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert "bert.embeddings.word_embeddings.weight" not in changed
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert {"bert.embeddings.position_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight", "classifier.weight"} <= changed


def test_unknown_init_fails_clearly_offline():
    with pytest.raises(UserError, match="cannot be reached offline"):
        resolve_init("bert-base-uncased")
