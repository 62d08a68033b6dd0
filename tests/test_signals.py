"""The signal store: ragged size, faithful read-back, verification, and store == online losses."""

import json

import numpy as np
import pytest
import torch

from attnkd.data import Split, collate
from attnkd.errors import UserError
from attnkd.losses import attn_kl_loss, kd_loss
from attnkd.models import load_model
from attnkd.tasks import get_task
from attnkd.signals import FORMAT, SignalStore, extract


@pytest.fixture
def split():
    rng = np.random.default_rng(0)
    ids = [[101, *rng.integers(2000, 5000, size=n).tolist(), 102] for n in (3, 9, 1, 6, 12, 4, 7)]
    return Split(ids, np.array([0, 1, 2, 3, 4, 0, 1]))


@pytest.fixture
def store_dir(tmp_path, tiny_model_dir, split):
    model = load_model(tiny_model_dir, get_task("classification"))
    out = tmp_path / "signals"
    out.mkdir()
    wanted = {"attn": [1, 2], "scores": [2], "q": [2], "k": [2], "v": [2], "hidden": [1]}
    extract(model, split, wanted, "float16", 3, 0, out, {"inputs_sha256": "x", "teacher_sha256": "y"}, get_task("classification"))
    return out


def test_store_is_ragged_at_the_fp16_bound(store_dir, split):
    heads, width = 4, 32
    square = sum(heads * n * n * 2 for n in split.lengths)  # bytes of one layer's maps, no padding
    vector = sum(n * width * 2 for n in split.lengths)
    assert (store_dir / "attn_layer1.npy").stat().st_size - 128 == square  # minus the .npy header
    assert (store_dir / "scores_layer2.npy").stat().st_size - 128 == square
    assert (store_dir / "v_layer2.npy").stat().st_size - 128 == vector


def test_store_matches_the_teacher_run_online(store_dir, tiny_model_dir, split):
    model = load_model(tiny_model_dir, get_task("classification")).eval()
    store = SignalStore(store_dir)
    idx = np.array([4, 0, 2])
    b = collate(split, idx, 0)
    with torch.no_grad():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_attentions=True, output_hidden_states=True)
    outputs_t, stored = store.batch(idx, b["input_ids"].shape[1])
    logits_t = outputs_t["logits"]
    maps = {l: stored[("attn", l)] for l in (1, 2)}
    assert torch.allclose(logits_t, out.logits, atol=1e-5)
    mask = b["attention_mask"]
    for layer in (1, 2):
        online = out.attentions[layer - 1] * mask[:, None, :, None] * mask[:, None, None, :]
        assert torch.allclose(maps[layer], online, atol=1e-3)  # fp16 storage
    online_h = out.hidden_states[1] * mask[:, :, None]
    assert torch.allclose(stored[("hidden", 1)], online_h, atol=2e-2 * online_h.abs().max().item())
    # the losses a student sees are the same from the store and online
    torch.manual_seed(1)
    s_logits = torch.randn(3, 5)
    s_attn = torch.softmax(torch.randn(3, 4, b["input_ids"].shape[1], b["input_ids"].shape[1]).masked_fill(~mask[:, None, None, :].bool(), -1e9), -1)
    assert kd_loss(s_logits, logits_t, 2.0).item() == pytest.approx(kd_loss(s_logits, out.logits, 2.0).item(), abs=1e-4)
    assert attn_kl_loss(s_attn, maps[2], mask).item() == pytest.approx(attn_kl_loss(s_attn, out.attentions[1], mask).item(), abs=2e-3)


def test_truncated_file_is_named(store_dir):
    path = store_dir / "attn_layer2.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match=r"attn_layer2.npy: .* bytes, manifest.json says .*truncated"):
        SignalStore(store_dir)


def test_altered_file_is_named(store_dir):
    path = store_dir / "logits.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"logits.npy: sha256 does not match"):
        SignalStore(store_dir)


def test_store_refuses_layers_inputs_or_teacher_it_does_not_cover(store_dir):
    store = SignalStore(store_dir)
    with pytest.raises(UserError, match=r"'attn' of teacher layers \[3\] is not stored"):
        store.require({"attn": [1, 3]}, "x", "y")
    with pytest.raises(UserError, match=r"'hidden' of teacher layers \[2\] is not stored.*re-run `dvc repro extract`"):
        store.require({"hidden": [2]}, "x", "y")
    with pytest.raises(UserError, match="different prepared data"):
        store.require({"attn": [1]}, "other", "y")
    with pytest.raises(UserError, match="different teacher"):
        store.require({"attn": [1]}, "x", "other")
    store.require({"attn": [1, 2], "q": [2], "k": [2], "v": [2]}, "x", "y")


@pytest.mark.parametrize("dtype, rel", [("float32", 1e-6), ("float16", 1e-3), ("bfloat16", 8e-3)])
def test_every_storage_dtype_reads_back_within_its_precision(tmp_path, tiny_model_dir, split, dtype, rel):
    model = load_model(tiny_model_dir, get_task("classification")).eval()
    out = tmp_path / dtype
    out.mkdir()
    manifest = extract(model, split, {"attn": [1], "hidden": [2]}, dtype, 4, 0, out, {"inputs_sha256": "x", "teacher_sha256": "y"}, get_task("classification"))
    assert manifest.dtype == dtype
    idx = np.arange(len(split))
    b = collate(split, idx, 0)
    with torch.no_grad():
        ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_attentions=True, output_hidden_states=True)
    _, stored = SignalStore(out).batch(idx, b["input_ids"].shape[1])
    mask = b["attention_mask"]
    attn = ref.attentions[0] * mask[:, None, :, None] * mask[:, None, None, :]
    hidden = ref.hidden_states[2] * mask[:, :, None]
    assert torch.allclose(stored[("attn", 1)], attn, atol=rel, rtol=rel)
    assert torch.allclose(stored[("hidden", 2)], hidden, atol=rel * hidden.abs().max().item(), rtol=rel)
    itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]
    assert (out / "attn_layer1.npy").stat().st_size - 128 == itemsize * sum(4 * n * n for n in split.lengths)


def resident_file_mib() -> float:
    """This process's resident file-backed memory (Linux), in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:")) / 1024


def test_reading_does_not_keep_the_store_resident(tmp_path):
    """An 8 MiB store read in scattered batches: the kernel maps 64 KiB around each page a read
    touches, so without unmapping after each batch the process would hold most of the file."""
    n, heads, t = 2000, 2, 32  # 4 KiB of fp16 maps per example
    lengths = np.full(n, t, dtype=np.int32)
    np.save(tmp_path / "lengths.npy", lengths)
    np.save(tmp_path / "logits.npy", np.zeros((n, 2), dtype=np.float32))
    np.save(tmp_path / "attn_layer1.npy", np.ones(n * heads * t * t, dtype=np.float16))
    info = {"sha256": "-", "bytes": 0, "shape": [], "dtype": "-"}  # not verified here
    files = {name: info for name in ("lengths.npy", "logits.npy", "attn_layer1.npy")}
    manifest = {"format": FORMAT, "num_examples": n, "num_labels": 2, "heads": heads, "width": 8, "dtype": "float16", "tensors": {"attn": [1]},
                "attn_kind": "probabilities", "files": files}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    store = SignalStore(tmp_path, verify=False)
    before = resident_file_mib()
    rng = np.random.default_rng(0)
    for _ in range(100):
        _, maps = store.batch(rng.choice(n, size=8, replace=False), t)
        assert maps[("attn", 1)].shape == (8, heads, t, t) and bool((maps[("attn", 1)] == 1).all())
    assert resident_file_mib() - before < 1.0
