"""Task translation through the stage scripts up to distill on real Multi30k pairs: a joint
vocabulary fixed by the training split, a tiny encoder-decoder trained from scratch, validation
scores that are sacreBLEU's of the saved model's translations, a signal store equal to the
teacher online, students whose losses are those worked out by hand from the store, and bad
parallel files refused with one line naming the file. (test_translation_pipeline.py: the whole
pipeline through `dvc repro`.)"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from attnkd import data
from attnkd.errors import UserError
from attnkd.models import load_model, load_tokenizer
from attnkd.objective import check_compatible
from attnkd.tasks.translation.store import PairStore
from attnkd.params import Params
from attnkd.tasks.translation.model import EOS_ID, collate_pairs, forward, translate
from attnkd.tasks import get_task
from attnkd.tasks.translation.text import read_lines, score
from conftest import REPO, run_script, shared_data

RAW = "multi30k/task1/raw"
SIZES = {"train": 240, "val": 40, "test_2016_flickr": 40}  # first lines of each real file
METHODS = {"ce": {"ce": 1.0}, "kd": {"ce": 0.5, "kd": 0.5}, "seq_kd": {"seq_kd": 1.0}, "seq_kd_at": {"seq_kd": 1.0, "cross_kl": 1.0}}


def write_excerpt(dst: Path) -> Path:
    """The first lines of the real train, val and test files, plain text (train) and gzip (the rest)."""
    raw = shared_data(f"{RAW}/val.en.gz") / RAW
    dst.mkdir(parents=True, exist_ok=True)
    for stem, n in SIZES.items():
        for lang in ("en", "de"):
            text = "\n".join(read_lines(raw / f"{stem}.{lang}.gz")[:n]) + "\n"
            if stem == "train":
                (dst / f"{stem}.{lang}").write_text(text, encoding="utf-8")
            else:
                (dst / f"{stem}.{lang}.gz").write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    return dst


def translation_params(raw_dir: Path, **data_overrides) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["task"] = "translation"
    params["data"] |= {"source": "files", "dir": str(raw_dir), "splits": {"train": "train", "validation": "val", "test": "test_2016_flickr"},
                       "source_lang": "en", "target_lang": "de", "vocab_size": 400, "max_length": 32} | data_overrides
    params["students"] = {"small": {"family": "transformer", "num_layers": 1, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64, "init": "random"}}
    params["methods"] = METHODS
    params["extract"] |= {"topk": 4, "batch_size": 16}
    params["distill"] |= {"epochs": 2, "batch_size": 16, "learning_rate": 3.0e-3, "label_smoothing": 0.1, "checkpoint_every": 0, "eval_batch_size": 40}
    params["student_seeds"] = [42]
    params["teacher"] |= {"epochs": 3, "batch_size": 16, "learning_rate": 3.0e-3, "warmup_ratio": 0.1, "checkpoint_every": 0, "eval_batch_size": 40,
                          "seq2seq": {"encoder_layers": 1, "decoder_layers": 2, "d_model": 64, "heads": 4, "ffn": 128, "dropout": 0.1, "label_smoothing": 0.1}}
    return params


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    raw = write_excerpt(root / "raw")
    (root / "params.yaml").write_text(yaml.safe_dump(translation_params(raw)))
    p = ["--params", root / "params.yaml"]
    assert run_script("prepare", *p, "--out", root / "prepared", "--report", root / "data.json") == 0
    assert run_script("teacher", *p, "--prepared", root / "prepared", "--out", root / "teacher", "--metrics", root / "teacher.json",
                      "--curve", root / "teacher.tsv") == 0
    (root / "transfer").mkdir()
    assert run_script("augment", *p, "--prepared", root / "prepared", "--out", root / "transfer") == 0  # copies 0: an empty transfer set
    assert run_script("plan", *p, "--teacher", root / "teacher", "--out", root / "plan.json") == 0
    assert run_script("extract", *p, "--prepared", root / "prepared", "--transfer", root / "transfer", "--teacher", root / "teacher",
                      "--plan", root / "plan.json", "--out", root / "signals") == 0
    return root


def test_prepare_writes_pairs_a_vocabulary_and_a_data_report(stages):
    meta = data.load_meta(stages / "prepared")
    assert {k: v.examples for k, v in meta.splits.items()} == {"train": 240, "validation": 40, "test": 40}
    tok = load_tokenizer(stages / "prepared/tokenizer")
    assert len(tok) == 400 and (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    test = data.load_split(stages / "prepared", "test")
    first_de = read_lines(shared_data(f"{RAW}/val.en.gz") / RAW / "test_2016_flickr.de.gz")[0]
    assert test.extra["text_pair"][0] == " ".join(first_de.split())
    assert tok.decode(test.extra["target_ids"][0][:-1].tolist()) == test.extra["text_pair"][0]  # byte-level: the sentence comes back
    report = json.loads((stages / "data.json").read_text())
    assert report["task"] == "translation en->de" and report["splits"]["train"]["pairs"] == 240 and report["vocab_size"] == 400
    assert report["splits"]["test"]["from"].endswith("test_2016_flickr.{en,de}")


def test_prepare_is_deterministic(stages, tmp_path):
    assert run_script("prepare", "--params", stages / "params.yaml", "--out", tmp_path / "again", "--report", tmp_path / "data.json") == 0
    first, again = data.load_meta(stages / "prepared"), data.load_meta(tmp_path / "again")
    assert first.splits == again.splits
    assert (stages / "prepared/tokenizer/tokenizer.json").read_bytes() == (tmp_path / "again/tokenizer/tokenizer.json").read_bytes()


def test_teacher_learns_and_its_validation_scores_are_sacrebleus(stages):
    """The kept epoch's validation chrF and BLEU equal sacreBLEU's corpus scores of the saved
    model's greedy translations of the validation sources against their references."""
    curve = pd.read_csv(stages / "teacher.tsv", sep="\t")
    assert list(curve["epoch"]) == [1, 2, 3] and {"train_ce", "val_bleu", "val_chrf"} <= set(curve.columns)
    assert curve["train_ce"].iloc[-1] < curve["train_ce"].iloc[0]
    summary = json.loads((stages / "teacher.json").read_text())
    task = get_task("translation").bind(stages / "prepared")
    model = load_model(stages / "teacher", task)
    assert type(model).__name__ == "MarianMTModel" and model.config.d_model == 64
    val = data.load_split(stages / "prepared", "validation")
    hyps = task.texts(task.predict(model, val, 40, 0))
    again = score(hyps, list(val.extra["text_pair"]))
    assert (summary["val_bleu"], summary["val_chrf"]) == (pytest.approx(again.bleu, abs=1e-9), pytest.approx(again.chrf, abs=1e-9))
    assert curve["val_chrf"].iloc[-1] > curve["val_chrf"].iloc[0] > 0  # 45 steps on 240 pairs: chrF rises, BLEU is still 0
    best = curve.loc[curve["val_chrf"].idxmax()]  # the kept epoch: the first with the best chrF
    assert summary["best_epoch"] == best["epoch"] == 3 and summary["val_bleu"] == pytest.approx(best["val_bleu"], abs=1e-5)
    record = json.loads((stages / "teacher/attnkd.json").read_text())
    assert record["params"]["seq2seq"]["d_model"] == 64 and "init" not in record["params"]


def test_the_plan_stores_what_each_method_reads_on_its_own_targets(stages):
    """kd reads the top-k under the references; seq_kd the teacher's translations; seq_kd_at also
    the cross-attention of teacher decoder layer 2 (of 2), which the uniform map pairs with the
    student's one layer, under the translations."""
    assert json.loads((stages / "plan.json").read_text())["tensors"] == {"reference/topk": [], "teacher/cross": [2], "teacher/ids": []}


def test_the_store_holds_the_teachers_translations_topk_and_cross_attention_as_online(stages):
    store = PairStore(stages / "signals")
    task = get_task("translation").bind(stages / "prepared")
    teacher = load_model(stages / "teacher", task)
    train = data.load_split(stages / "prepared", "train")
    sources = list(train.input_ids)
    online = translate(teacher, sources, beam=1, batch_size=16)  # extract.batch_size
    stored = store.translations()
    assert len(stored) == 240 and all(s.tolist() == [*o.tolist(), EOS_ID] for s, o in zip(stored, online))
    idx = np.array([3, 0, 77, 239])  # ragged: different source and target lengths
    for target, tgts in (("reference", list(train.extra["target_ids"])), ("teacher", stored)):
        batch = collate_pairs([sources[i] for i in idx], [tgts[i] for i in idx])
        t, s = batch["decoder_input_ids"].shape[1], batch["input_ids"].shape[1]
        got = store.batch(idx, target, store.manifest.tensors, t, s)
        with torch.no_grad():
            out = forward(teacher, batch, output_attentions=True)
        real = batch["decoder_attention_mask"].bool()
        if target == "reference":
            logp, ids = torch.log_softmax(out.logits, -1).topk(4, -1)
            assert torch.equal(got["topk_ids"][real], ids[real]) and torch.allclose(got["topk_logp"][real], logp[real], atol=1e-6)
            assert ("cross", 2) not in got
        else:
            cross = out.cross_attentions[1]  # layer 2: (B, H, t, s), zero on padded source keys
            assert got[("cross", 2)].shape == cross.shape and "topk_ids" not in got
            assert torch.allclose(got[("cross", 2)] * real[:, None, :, None], cross * real[:, None, :, None], atol=2e-3)  # float16 store
    heads = store.manifest.heads
    assert store.manifest.files["teacher_cross_layer2.npy"].shape == [int(heads * sum(len(a) * len(b) for a, b in zip(stored, sources)))]


def test_a_method_with_both_targets_or_a_loss_of_another_task_is_refused(stages, tmp_path, capsys):
    doc = yaml.safe_load((stages / "params.yaml").read_text())
    for methods, pattern in (({"mixed": {"ce": 1.0, "seq_kd": 1.0}}, r"methods\.mixed: .*a method takes one of the two targets"),
                             ({"at": {"ce": 1.0, "attn_kl": 1.0}}, r"methods\.at: methods: attn_kl is not a loss of task translation \(its losses: ce, kd, seq_kd, cross_kl, cross_kl_heads, cross_mse, cross_mse_heads, enc_kl, .*, dec_mse_heads\)")):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc | {"methods": methods}))
        capsys.readouterr()
        assert run_script("plan", "--params", tmp_path / "params.yaml", "--teacher", stages / "teacher", "--out", tmp_path / "plan.json") == 2
        assert re.search(pattern, capsys.readouterr().err)
    with pytest.raises(UserError, match=r"seq_kd is not a loss of task classification"):
        check_compatible({"seq_kd": 1.0}, Params().distill, Params().students["small"], 12, 384, get_task("classification"))


def distill(stages: Path, method: str, seed: int = 42, **extra: str) -> int:
    return run_script("distill", "--params", stages / "params.yaml", "--prepared", stages / "prepared", "--transfer", stages / "transfer",
                      "--teacher", stages / "teacher", "--signal-store", stages / "signals", "--out", stages / f"small-{method}-s{seed}",
                      "--metrics", stages / f"small-{method}-s{seed}.json", "--curve", stages / f"small-{method}-s{seed}.tsv",
                      "--student", "small", "--method", method, "--seed", str(seed))


@pytest.fixture(scope="module")
def students(stages):
    for method in METHODS:
        assert distill(stages, method) == 0
    return stages


def test_every_method_trains_a_student_on_its_targets(students):
    """Each student is a smaller encoder-decoder; seq_kd and seq_kd_at train on the teacher's
    translations (their first-epoch loss is below ce's, on the references: the teacher's
    outputs are easier to fit), kd on the references with the top-k term logged."""
    curves = {m: pd.read_csv(students / f"small-{m}-s42.tsv", sep="\t") for m in METHODS}
    records = {m: json.loads((students / f"small-{m}-s42/attnkd.json").read_text()) for m in METHODS}
    assert {m: r["targets"] for m, r in records.items()} == {"ce": "reference", "kd": "reference", "seq_kd": "teacher", "seq_kd_at": "teacher"}
    assert "train_kd" in curves["kd"] and "train_cross_kl" in curves["seq_kd_at"] and "train_seq_kd" in curves["seq_kd"]
    assert records["seq_kd_at"]["layer_pairs"] == [[2, 1]]
    assert curves["seq_kd"]["train_seq_kd"].iloc[0] < curves["ce"]["train_ce"].iloc[0]
    student = load_model(students / "small-seq_kd_at-s42", get_task("translation"))
    assert (student.config.d_model, student.config.encoder_layers, student.config.decoder_layers) == (32, 1, 1)
    assert curves["seq_kd"]["train_seq_kd"].iloc[-1] < curves["seq_kd"]["train_seq_kd"].iloc[0]


def test_a_students_seq_kd_is_the_cross_entropy_on_the_stored_translations(students):
    """Recompute the first batch of seq_kd_at by hand from the store: the cross-entropy of an
    untrained student on the teacher's translations, and the cross-attention KL against the
    teacher's maps under them, equal the run's objective on that batch."""
    from attnkd.losses import cross_kl_loss

    params = Params.model_validate(yaml.safe_load((students / "params.yaml").read_text()))
    task = get_task("translation").bind(students / "prepared")
    teacher = load_model(students / "teacher", task)
    store = PairStore(students / "signals")
    run = task.assemble(params, "small", "seq_kd_at", 42, teacher, store)
    train = run.rows(data.load_split(students / "prepared", "train"))
    idx = np.array([5, 9, 100])
    batch = task.collate(train, idx, 0)
    stored = store.translations()
    assert batch["labels"][0, : len(stored[5])].tolist() == stored[5].tolist()
    run.student.eval()
    total, terms = run.step_loss(run.student, batch, idx)
    out = forward(run.student, batch, output_attentions=True)
    real = batch["decoder_attention_mask"].bool()
    ce = torch.nn.functional.cross_entropy(out.logits[real], batch["labels"][real], label_smoothing=params.distill.label_smoothing)
    cross_t = store.batch(idx, "teacher", {"teacher/cross": [2]}, real.shape[1], batch["input_ids"].shape[1])[("cross", 2)]
    kl = cross_kl_loss(out.cross_attentions[0], cross_t, batch["decoder_attention_mask"])
    assert terms["seq_kd"].item() == pytest.approx(ce.item(), abs=1e-5) and terms["cross_kl"].item() == pytest.approx(kl.item(), abs=1e-5)
    assert total.item() == pytest.approx(ce.item() + kl.item(), abs=1e-5)


def test_kd_from_the_stored_topk_is_word_level_kd(students):
    """kd on the stored teacher's top-k is losses.topk_kd_loss over the real target positions."""
    from attnkd.losses import topk_kd_loss

    params = Params.model_validate(yaml.safe_load((students / "params.yaml").read_text()))
    task = get_task("translation").bind(students / "prepared")
    run = task.assemble(params, "small", "kd", 42, load_model(students / "teacher", task), PairStore(students / "signals"))
    train = run.rows(data.load_split(students / "prepared", "train"))
    idx = np.array([1, 2, 3, 200])
    batch = task.collate(train, idx, 0)
    run.student.eval()
    _, terms = run.step_loss(run.student, batch, idx)
    got = PairStore(students / "signals").batch(idx, "reference", {"reference/topk": []}, batch["decoder_input_ids"].shape[1], batch["input_ids"].shape[1])
    expected = topk_kd_loss(forward(run.student, batch).logits, got["topk_ids"], got["topk_logp"], batch["decoder_attention_mask"], params.distill.temperature)
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-5)


def bad_lengths(raw: Path) -> str:
    (raw / "train.de").write_text("\n".join((raw / "train.de").read_text().splitlines()[:-1]) + "\n")
    return r"train\.en: 240 lines, but .*train\.de has 239"


def bad_empty_line(raw: Path) -> str:
    lines = (raw / "train.en").read_text().splitlines()
    (raw / "train.en").write_text("\n".join([lines[0], "  ", *lines[2:]]) + "\n")
    return r"train\.en: line 2: empty sentence \(data\.empty_pairs: fail"


def bad_not_utf8(raw: Path) -> str:
    (raw / "train.de").write_bytes((raw / "train.de").read_bytes().replace(b"\n", b"\n\xff", 1))
    return r"train\.de: line 2: not valid UTF-8"


def bad_missing_language(raw: Path) -> str:
    (raw / "val.de.gz").unlink()
    return r"val\.de: not found \(nor \.gz\)"


@pytest.mark.parametrize("case", [bad_lengths, bad_empty_line, bad_not_utf8, bad_missing_language], ids=lambda c: c.__name__)
def test_bad_parallel_files_stop_prepare_with_one_line_and_no_output(tmp_path, capsys, case):
    raw = write_excerpt(tmp_path / "raw")
    pattern = case(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(translation_params(raw, empty_pairs="fail")))
    capsys.readouterr()
    rc = run_script("prepare", "--params", tmp_path / "params.yaml", "--out", tmp_path / "prepared", "--report", tmp_path / "data.json")
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error: ")]
    assert rc == 2 and len(lines) == 1 and re.search(pattern, lines[0]), err[-1500:]
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "data.json").exists()


def test_an_empty_pair_is_dropped_and_counted_by_default(tmp_path):
    raw = write_excerpt(tmp_path / "raw")
    bad_empty_line(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(translation_params(raw)))
    assert run_script("prepare", "--params", tmp_path / "params.yaml", "--out", tmp_path / "prepared", "--report", tmp_path / "data.json") == 0
    report = json.loads((tmp_path / "data.json").read_text())
    assert report["splits"]["train"]["dropped_empty"] == 1 and report["splits"]["train"]["pairs"] == 239


def write_hub_copy(raw: Path, dst: Path, layout: str) -> Path:
    """The excerpt's three splits as a local data set `datasets.load_dataset` reads as it reads the
    hub's (one Parquet file per split): a `translation` column of {lang: sentence}, or a column per
    language beside another column."""
    import datasets

    dst.mkdir(parents=True)
    for stem, split in (("train", "train"), ("val", "validation"), ("test_2016_flickr", "test")):
        en, de = (read_lines(next(raw.glob(f"{stem}.{lang}*"))) for lang in ("en", "de"))
        rows = {"translation": [{"en": e, "de": d} for e, d in zip(en, de)]} if layout == "translation" else {"de": de, "id": list(range(len(en))), "en": en}
        datasets.Dataset.from_dict(rows).to_parquet(str(dst / f"{split}.parquet"))
    return dst


@pytest.mark.parametrize("layout", ["translation", "columns"])
def test_a_hub_parallel_corpus_prepares_as_its_files_do(tmp_path, capsys, monkeypatch, layout):
    raw = write_excerpt(tmp_path / "raw")
    local = write_hub_copy(raw, tmp_path / "local_hub", layout)
    hub = {"source": "hub", "hub_name": str(local), "hub_config": "", "splits": {"train": "train", "validation": "validation", "test": "test"}}
    (tmp_path / "files.yaml").write_text(yaml.safe_dump(translation_params(raw)))
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(translation_params(raw, **hub)))
    for name in ("files", "hub"):
        assert run_script("prepare", "--params", tmp_path / f"{name}.yaml", "--out", tmp_path / name, "--report", tmp_path / f"{name}.json") == 0
    for split in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "files" / f"{split}.parquet"), pd.read_parquet(tmp_path / "hub" / f"{split}.parquet"))
    assert load_tokenizer(tmp_path / "files" / "tokenizer").get_vocab() == load_tokenizer(tmp_path / "hub" / "tokenizer").get_vocab()
    # another language pair than the data set's: one line naming the split and the languages it has
    (tmp_path / "fr.yaml").write_text(yaml.safe_dump(translation_params(raw, **hub, target_lang="fr")))
    capsys.readouterr()
    assert run_script("prepare", "--params", tmp_path / "fr.yaml", "--out", tmp_path / "fr", "--report", tmp_path / "fr.json") == 2
    err = capsys.readouterr().err.strip()
    err = err.splitlines()[-1]  # after datasets' progress lines
    assert re.fullmatch(r"error: hub .* split 'train': (its translation column has languages \['de', 'en'\]|no translation column nor columns 'en' and 'fr').*", err), err
    assert not (tmp_path / "fr").exists()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: an offline machine
    (tmp_path / "offline.yaml").write_text(yaml.safe_dump(translation_params(raw, **hub | {"hub_name": "bentrevett/multi30k"})))
    assert run_script("prepare", "--params", tmp_path / "offline.yaml", "--out", tmp_path / "offline", "--report", tmp_path / "offline.json") == 2
    assert capsys.readouterr().err.strip().startswith("error: data.hub_name 'bentrevett/multi30k': the Hugging Face hub cannot be reached")


ALL_MAPS = {"ce": 1.0, "cross_kl": 1.0, "enc_kl": 1.0, "dec_kl": 1.0}  # every attention kind, on the references


@pytest.fixture(scope="module")
def all_maps(stages, tmp_path_factory):
    """A store for a method that reads all three attention kinds of teacher layer 1 (the 1 + 2-layer
    teacher's encoder has no layer 2, so the layer map pairs its layer 1 with the student's)."""
    root = tmp_path_factory.mktemp("maps")
    doc = yaml.safe_load((stages / "params.yaml").read_text())
    doc["methods"] = {"maps": ALL_MAPS}
    doc["distill"]["layer_map"] = [[1, 1]]
    (root / "params.yaml").write_text(yaml.safe_dump(doc))
    p = ["--params", root / "params.yaml"]
    assert run_script("plan", *p, "--teacher", stages / "teacher", "--out", root / "plan.json") == 0
    assert json.loads((root / "plan.json").read_text())["tensors"] == {"reference/cross": [1], "reference/dec": [1], "reference/enc": [1]}
    assert run_script("extract", *p, "--prepared", stages / "prepared", "--transfer", stages / "transfer", "--teacher", stages / "teacher",
                      "--plan", root / "plan.json", "--out", root / "signals") == 0
    return root


def test_the_store_holds_encoder_and_decoder_self_attention_as_online(stages, all_maps):
    """Ragged (H, n, n) encoder and (H, m, m) decoder maps come back zero-padded and equal to the
    teacher's own, beside its cross-attention, for pairs of different lengths."""
    store = PairStore(all_maps / "signals")
    teacher = load_model(stages / "teacher", get_task("translation").bind(stages / "prepared"))
    train = data.load_split(stages / "prepared", "train")
    lengths = np.array([len(x) + 100 * len(y) for x, y in zip(train.input_ids, train.extra["target_ids"])])
    idx = np.array([int(np.argmin(lengths)), 0, *np.unique(lengths, return_index=True)[1][1:3]])  # the shortest pair and others: ragged
    batch = collate_pairs([train.input_ids[i] for i in idx], [train.extra["target_ids"][i] for i in idx])
    t, s = batch["decoder_input_ids"].shape[1], batch["input_ids"].shape[1]
    got = store.batch(idx, "reference", store.manifest.tensors, t, s)
    with torch.no_grad():
        out = forward(teacher, batch, output_attentions=True)
    src, tgt = batch["attention_mask"].bool(), batch["decoder_attention_mask"].bool()
    for kind, online, rows, cols in (("enc", out.encoder_attentions[0], src, src), ("dec", out.decoder_attentions[0], tgt, tgt),
                                     ("cross", out.cross_attentions[0], tgt, src)):
        real = rows[:, None, :, None] & cols[:, None, None, :]  # (B, 1, rows, cols): real query and key
        assert got[(kind, 1)].shape == online.shape
        assert torch.allclose(got[(kind, 1)][real.expand_as(online)], online[real.expand_as(online)], atol=2e-3)  # float16 store
        assert not got[(kind, 1)][~real.expand_as(online)].any()  # padding holds 0
    assert len({len(train.input_ids[i]) for i in idx}) > 1 and len({len(train.extra["target_ids"][i]) for i in idx}) > 1, idx
    heads = store.manifest.heads
    assert store.manifest.files["reference_enc_layer1.npy"].shape == [int(heads * sum(len(x) ** 2 for x in train.input_ids))]


VARIANTS = {"ce": 1.0, "cross_kl_heads": 1.0, "cross_mse": 1.0, "enc_mse_heads": 1.0, "dec_mse": 1.0, "dec_kl_heads": 1.0}  # per head and MSE, from the same store


@pytest.mark.parametrize("weights", [ALL_MAPS, VARIANTS], ids=["kl", "variants"])
def test_self_attention_losses_read_the_stored_maps_over_their_own_tokens(stages, all_maps, weights):
    """enc_* average the encoder's rows over the source tokens, dec_* and cross_* the decoder's
    over the target tokens: the objective's terms equal the pure losses worked out from the store
    with those masks, head-averaged (cross_kl, *_mse) or head by head (*_heads)."""
    from attnkd.losses import cross_kl_loss, map_kl_loss, map_mse_loss

    doc = yaml.safe_load((all_maps / "params.yaml").read_text())
    doc["methods"] = {"maps": weights}
    params = Params.model_validate(doc)
    task = get_task("translation").bind(stages / "prepared")
    store = PairStore(all_maps / "signals")
    run = task.assemble(params, "small", "maps", 42, load_model(stages / "teacher", task), store)
    train = run.rows(data.load_split(stages / "prepared", "train"))
    idx = np.array([5, 9, 100])
    batch = task.collate(train, idx, 0)
    run.student.eval()
    _, terms = run.step_loss(run.student, batch, idx)
    out = forward(run.student, batch, output_attentions=True)
    got = store.batch(idx, "reference", store.manifest.tensors, batch["decoder_input_ids"].shape[1], batch["input_ids"].shape[1])
    src, tgt = batch["attention_mask"], batch["decoder_attention_mask"]
    maps = {"enc": (out.encoder_attentions[0], got[("enc", 1)], src), "dec": (out.decoder_attentions[0], got[("dec", 1)], tgt),
            "cross": (out.cross_attentions[0], got[("cross", 1)], tgt)}
    averaged = {kind: (a.mean(1, keepdim=True), b.float().mean(1, keepdim=True), m) for kind, (a, b, m) in maps.items()}
    by_loss = {"kl": lambda a: cross_kl_loss(*maps[a]), "kl_heads": lambda a: map_kl_loss(*maps[a]),
               "mse": lambda a: map_mse_loss(*averaged[a]), "mse_heads": lambda a: map_mse_loss(*maps[a])}
    for name in weights.keys() - {"ce"}:
        kind, loss = name.split("_", 1)
        value = by_loss[loss](kind)
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5) and value.item() > 0, name
    assert cross_kl_loss(out.encoder_attentions[0], got[("enc", 1)], src).item() != pytest.approx(
        cross_kl_loss(out.encoder_attentions[0], got[("enc", 1)], torch.ones_like(src)).item(), rel=1e-3)  # the mask matters
    assert map_kl_loss(*maps["cross"]).item() != pytest.approx(cross_kl_loss(*maps["cross"]).item(), rel=1e-3)  # per head is not averaged


def test_an_encoder_loss_on_a_layer_the_encoder_lacks_is_refused(stages, tmp_path, capsys):
    doc = yaml.safe_load((stages / "params.yaml").read_text()) | {"methods": {"enc": {"ce": 1.0, "enc_kl": 1.0}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))  # uniform map: teacher layer 2, the 1 + 2-layer teacher's encoder has 1
    capsys.readouterr()
    assert run_script("plan", "--params", tmp_path / "params.yaml", "--teacher", stages / "teacher", "--out", tmp_path / "plan.json") == 2
    assert re.search(r"methods\.enc: an encoder self-attention loss .* up to layer 2, but the teacher has 1 encoder layers", capsys.readouterr().err)
    assert not (tmp_path / "plan.json").exists()


def test_the_task_predicts_with_its_beam(stages):
    """evaluate.beam's path: the task searching with beam 2 predicts translate's beam-2 output, which differs from greedy's."""
    task = get_task("translation").bind(stages / "prepared")
    teacher = load_model(stages / "teacher", task)
    val = data.load_split(stages / "prepared", "validation")
    greedy, beam = task.predict(teacher, val, 40, 0), task.searching(2).predict(teacher, val, 40, 0)
    assert [b.tolist() for b in beam] == [x.tolist() for x in translate(teacher, list(val.input_ids), beam=2, batch_size=40)]
    assert any(g.tolist() != b.tolist() for g, b in zip(greedy, beam)) and task.beam == 1
