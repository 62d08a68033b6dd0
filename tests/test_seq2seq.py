"""Encoder-decoder building blocks on real Multi30k sentence pairs and a tiny model built from
config: batching, label-smoothed cross-entropy, cross-attention transfer, the teacher's top-k,
and decoding."""


import numpy as np
import pytest
import torch

from attnkd.losses import topk_kd_loss
from attnkd.tasks.translation.model import (BOS_ID, EOS_ID, IGNORE, PAD_ID, Architecture, build_model, collate_pairs, encode, forward,
                            label_smoothed_ce, pad_topk, teacher_topk, translate)
from attnkd.tasks.translation.text import read_parallel, train_tokenizer
from conftest import shared_data

RAW = "multi30k/task1/raw"
TINY = Architecture(encoder_layers=2, decoder_layers=2, d_model=32, heads=4, ffn=64)


@pytest.fixture(scope="module")
def pairs():
    """The first 24 validation pairs, encoded with a 600-entry vocabulary of the validation split."""
    val = read_parallel(shared_data(f"{RAW}/val.en.gz") / RAW, "val", "en", "de")
    tok = train_tokenizer(val.source + val.target, 600)
    return tok, encode(tok, val.source[:24], 48), encode(tok, val.target[:24], 48)


@pytest.fixture(scope="module")
def model(pairs):
    tok, _, _ = pairs
    return build_model(TINY, tok.get_vocab_size(), seed=0).eval()


def test_a_batch_shifts_the_target_right_and_pads_labels_with_ignore():
    src = [np.array([5, 6, EOS_ID], np.int32), np.array([7, EOS_ID], np.int32)]
    tgt = [np.array([8, EOS_ID], np.int32), np.array([9, 10, 11, EOS_ID], np.int32)]
    b = collate_pairs(src, tgt)
    assert b["input_ids"].tolist() == [[5, 6, EOS_ID], [7, EOS_ID, PAD_ID]] and b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["decoder_input_ids"].tolist() == [[BOS_ID, 8, PAD_ID, PAD_ID], [BOS_ID, 9, 10, 11]]
    assert b["labels"].tolist() == [[8, EOS_ID, IGNORE, IGNORE], [9, 10, 11, EOS_ID]]
    assert b["decoder_attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_encoding_ends_every_sentence_with_eos_and_respects_max_length(pairs):
    tok, src, tgt = pairs
    assert all(s[-1] == EOS_ID and len(s) <= 48 for s in src + tgt)
    assert tok.decode(src[0][:-1].tolist()).startswith("A group of men")


def test_label_smoothed_ce_hand_value_and_padding_inert():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [5.0, -5.0, 1.0]]])  # (1, 2, 3)
    labels = torch.tensor([[0, IGNORE]])
    eps = 0.1
    logq = torch.log_softmax(logits[0, 0], -1)
    expected = (1 - eps) * -logq[0] + eps * -logq.mean()
    assert label_smoothed_ce(logits, labels, eps).item() == pytest.approx(expected.item(), abs=1e-6)
    other = logits.clone()
    other[0, 1] = torch.tensor([-3.0, 9.0, 0.0])
    assert label_smoothed_ce(other, labels, eps).item() == pytest.approx(expected.item(), abs=1e-6)
    assert label_smoothed_ce(logits, labels, 0.0).item() == pytest.approx(-logq[0].item(), abs=1e-6)


def test_every_attention_kind_comes_back_with_its_shape(pairs, model):
    _, src, tgt = pairs
    b = collate_pairs(src[:3], tgt[:3])
    n, m = b["input_ids"].shape[1], b["decoder_input_ids"].shape[1]
    out = forward(model, b, output_attentions=True)
    assert out.logits.shape == (3, m, 600)
    assert [a.shape for a in out.encoder_attentions] == [(3, 4, n, n)] * 2
    assert [a.shape for a in out.decoder_attentions] == [(3, 4, m, m)] * 2
    assert [a.shape for a in out.cross_attentions] == [(3, 4, m, n)] * 2
    cross = out.cross_attentions[0]
    assert torch.allclose(cross.sum(-1), torch.ones(3, 4, m), atol=1e-5)  # rows over source tokens
    short = int(b["attention_mask"].sum(-1).argmin())  # a pair with padded source tokens
    assert b["attention_mask"][short].sum() < n and cross[short, :, :, int(b["attention_mask"][short].sum()):].abs().max() == 0
    assert torch.allclose(out.decoder_attentions[0].triu(1), torch.zeros(()))  # causal: no future target token


def test_stored_topk_gives_the_online_topk_loss_with_ragged_lengths(pairs, model):
    """Top-k rows kept per pair at its own target length, padded back into a batch, give the same
    word-KD loss as the online teacher's top-k on that batch."""
    _, src, tgt = pairs
    b = collate_pairs(src[:6], tgt[:6])
    mask = b["decoder_attention_mask"]
    with torch.no_grad():
        logits_t = forward(model, b).logits
    rows = teacher_topk(logits_t, mask, k=8)
    assert [r[0].shape for r in rows] == [(len(t), 8) for t in tgt[:6]]
    ids, logp = pad_topk(rows, mask.shape[1])
    online_logp, online_ids = torch.log_softmax(logits_t, -1).topk(8, -1)
    assert torch.equal(ids[mask.bool()], online_ids[mask.bool()])
    student = torch.randn(logits_t.shape, generator=torch.Generator().manual_seed(1))
    stored = topk_kd_loss(student, ids, logp, mask, 2.0)
    assert stored.item() == pytest.approx(topk_kd_loss(student, online_ids, online_logp, mask, 2.0).item(), abs=1e-5)


def test_greedy_translation_is_the_argmax_at_every_step(pairs, model):
    """`generate` with one beam equals a hand-written loop that feeds back the argmax token."""
    _, src, _ = pairs
    got = translate(model, src[:4], beam=1, max_new_tokens=12, batch_size=3)
    for source, hyp in zip(src[:4], got):
        ids = [BOS_ID]
        with torch.no_grad():
            for _ in range(12):
                batch = {"input_ids": torch.tensor([source.tolist()]), "attention_mask": torch.ones(1, len(source), dtype=torch.long),
                         "decoder_input_ids": torch.tensor([ids]), "decoder_attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
                nxt = int(forward(model, batch).logits[0, -1].argmax())
                if nxt == EOS_ID:
                    break
                ids.append(nxt)
        assert hyp.tolist() == [t for t in ids[1:] if t != PAD_ID]
    assert all(len(h) <= 12 for h in translate(model, src[:4], beam=3, max_new_tokens=12))


def test_a_tiny_model_learns_to_translate_seen_pairs(pairs):
    """Real training signal: 150 steps on 24 pairs take the loss below a third of its start, and
    greedy decoding then reproduces most of the training targets' tokens."""
    tok, src, tgt = pairs
    model = build_model(Architecture(1, 1, 64, 4, 128, dropout=0.0), tok.get_vocab_size(), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    b = collate_pairs(src[:8], tgt[:8])
    losses = []
    for _ in range(150):
        loss = label_smoothed_ce(forward(model, b).logits, b["labels"], 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 3
    hyps = translate(model, src[:8], beam=1, max_new_tokens=50)
    exact = sum(h.tolist() == t[:-1].tolist() for h, t in zip(hyps, tgt[:8]))
    assert exact >= 6, (exact, losses[-1])
