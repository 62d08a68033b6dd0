"""Named-entity recognition: reading CoNLL files and refusing bad ones, words to sub-tokens on real
sentences, windows joined back, token-level KD, the store against the online teacher, and entity
scores against hand counts and conlleval's reading of a hand case."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import yaml
from transformers import AutoTokenizer, BertForTokenClassification

from attnkd.data import Split
from attnkd.errors import UserError
from attnkd.losses import LOSSES, LossConfig
from attnkd.models import resolve_init
from attnkd.tasks import get_task
from attnkd.tasks.ner.conll import IGNORE, entities, f1_of, parse_conll, read_conll, span_counts, tag_names, windows
from conftest import run_script, shared_data, tiny_config, tiny_params

CONLL = shared_data("conll2003/train.txt") / "conll2003"
NAMES = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(resolve_init("all-MiniLM-L6-v2")))


@pytest.fixture(scope="module")
def train():
    return read_conll(CONLL / "train.txt", "train.txt")


def test_the_real_files_read_sentence_by_sentence(train):
    assert (len(train.sentences), train.documents, train.repaired) == (14041, 946, 0)  # SOURCE.md's counts
    assert sum(len(s.words) for s in train.sentences) == 203621
    first = train.sentences[0]
    assert first.words[:3] == ["EU", "rejects", "German"] and first.tags[:3] == ["B-ORG", "O", "B-MISC"] and first.where == "train.txt:3"
    assert tag_names(train.sentences) == NAMES
    counts = {}
    for s in train.sentences:
        for kind, _, _ in entities(s.tags):
            counts[kind] = counts.get(kind, 0) + 1
    assert counts == {"PER": 6600, "LOC": 7140, "ORG": 6321, "MISC": 3438}


def test_docstart_blank_lines_and_a_last_sentence_without_a_trailing_blank():
    text = "-DOCSTART- O\n\nEU B-ORG \nrejects O\n\n\n-DOCSTART- O\n\nPeter B-PER\nBlackburn I-PER"
    read = parse_conll(text, "x.txt")
    assert [s.words for s in read.sentences] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert [s.tags for s in read.sentences] == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert read.documents == 2 and read.sentences[1].where == "x.txt:9"


def test_an_i_tag_that_opens_an_entity_is_repaired_to_b_and_counted():
    read = parse_conll("the O\nU.N. I-ORG\nsaid O\n\nKofi I-PER\nAnnan I-PER\nof O\nGhana I-LOC\nUnited I-ORG\n", "x.txt")
    assert [s.tags for s in read.sentences] == [["O", "B-ORG", "O"], ["B-PER", "I-PER", "O", "B-LOC", "B-ORG"]]
    assert read.repaired == 4
    # conlleval reads the original tags the same way: the repair changes no entity
    assert entities(["I-PER", "I-PER", "O", "I-LOC", "I-ORG"]) == entities(read.sentences[1].tags)


@pytest.mark.parametrize("body, message", [
    (b"EU B-ORG\nrejects\n", "x.txt: line 2: 'rejects' has no tag"),
    (b"EU B-ORG\nrejects X-VERB\n", "x.txt: line 2: tag 'X-VERB' is not an IOB2 tag"),
    (b"EU B-ORG\nrejects PER\n", "x.txt: line 2: tag 'PER' is not an IOB2 tag"),
    (b"EU B-ORG\n\nM\xfcller B-PER\n", "x.txt: line 3: not UTF-8"),
    (b"-DOCSTART- O\n\n", "x.txt: no tagged sentences"),
])
def test_bad_conll_input_is_one_error_naming_file_and_line(tmp_path, body, message):
    (tmp_path / "x.txt").write_bytes(body)
    with pytest.raises(UserError) as err:
        read_conll(tmp_path / "x.txt", "x.txt")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_bad_input_stops_prepare_naming_file_and_line_and_writes_nothing(tmp_path, tiny_model_dir, capsys):
    folder = tmp_path / "conll"
    folder.mkdir()
    (folder / "train.txt").write_text("EU B-ORG\nrejects O\n\nPeter B-PER\n")
    (folder / "valid.txt").write_text("EU B-ORG\n")
    (folder / "test.txt").write_text("Peter B-PER\nsaid O\nin O\nGhana B-GPE\n")  # a type the training data lacks
    params = tiny_params(tiny_model_dir)
    params["task"] = "ner"
    params["data"] |= {"source": "files", "dir": str(folder), "splits": {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = run_script("prepare", "--params", tmp_path / "params.yaml", "--out", tmp_path / "prepared", "--report", tmp_path / "data.json")
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert f"{folder}/test.txt: sentence at line 1, word 4 'Ghana': tag 'B-GPE' does not occur in the training data" in err[0]
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "data.json").exists()


def test_words_align_to_their_first_sub_token_on_real_sentences(tokenizer, train):
    # train.txt:183 "Fischler proposed EU-wide measures ...": a name the tokenizer splits in three, a hyphenated word
    s = next(x for x in train.sentences if x.where == "train.txt:183")
    (w,) = windows(tokenizer, [s], NAMES, 128, "first")
    tokens = tokenizer.convert_ids_to_tokens(w.input_ids)
    assert tokens[:7] == ["[CLS]", "fis", "##ch", "##ler", "proposed", "eu", "-"] and tokens[-1] == "[SEP]"
    assert w.word_starts[:4] == [1, 4, 5, 8]  # Fischler, proposed, EU-wide (eu - wide), measures
    assert w.labels[:9] == [IGNORE, NAMES.index("B-PER"), IGNORE, IGNORE, 0, NAMES.index("B-MISC"), IGNORE, IGNORE, 0]
    assert [w.labels[p] for p in w.word_starts] == [NAMES.index(t) for t in s.tags]
    assert sum(lab != IGNORE for lab in w.labels) == len(s.words)
    # train.txt:459 "Germany imported 47,600 sheep": a number is one word of three pieces
    s = next(x for x in train.sentences if x.where == "train.txt:459")
    (w,) = windows(tokenizer, [s], NAMES, 128, "first")
    assert tokenizer.convert_ids_to_tokens(w.input_ids[w.word_starts[2] : w.word_starts[3]]) == ["47", ",", "600"]
    # label_subtokens all: every piece labelled, a B- word's later pieces as I-
    (a,) = windows(tokenizer, [next(x for x in train.sentences if x.where == "train.txt:183")], NAMES, 128, "all")
    assert a.labels[1:4] == [NAMES.index("B-PER"), NAMES.index("I-PER"), NAMES.index("I-PER")] and a.word_starts[:4] == [1, 4, 5, 8]


def test_a_long_sentence_is_cut_into_windows_of_whole_words_that_join_back(tokenizer, train):
    task = get_task("ner")
    s = max(train.sentences, key=lambda x: len(x.words))
    ws = windows(tokenizer, [s], NAMES, 32, "first")
    assert len(ws) > 2 and all(len(w.input_ids) <= 32 for w in ws)
    assert [w.first_word for w in ws] == list(np.cumsum([0, *[len(w.word_starts) for w in ws[:-1]]]))
    # predictions that give each position the tag id of its window-local word: joined back, one tag per word
    split = Split([np.array(w.input_ids) for w in ws], np.stack([np.pad(w.labels, (0, 32 - len(w.labels)), constant_values=IGNORE) for w in ws]),
                  extra={"sentence": np.zeros(len(ws), dtype=np.int64), "words": np.array([s.words[w.first_word : w.first_word + len(w.word_starts)] for w in ws], dtype=object),
                         "tags": np.array([s.tags[w.first_word : w.first_word + len(w.word_starts)] for w in ws], dtype=object),
                         "word_starts": np.array([np.array(w.word_starts) for w in ws], dtype=object)})
    predictions = np.where(split.labels >= 0, split.labels, 0)  # the gold tag at every word start
    frame = task.sentences(split, predictions, NAMES)
    assert len(frame) == 1 and frame["words"][0] == " ".join(s.words) and frame["predicted"][0] == " ".join(s.tags)
    assert (frame["tp"][0], frame["fp"][0], frame["fn"][0]) == (len(entities(s.tags)), 0, 0)


def test_entity_f1_equals_a_hand_count_with_a_partial_match_and_a_wrong_type():
    gold = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG"]
    pred = ["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG", "I-ORG", "O"]  # PER right; LOC predicted as ORG; ORG cut short
    assert span_counts(gold, pred) == (1, 2, 2)
    assert float(f1_of(np.array([1, 2, 2]))) == pytest.approx(2 / 6)  # P 1/3, R 1/3
    second = (["B-MISC", "O"], ["B-MISC", "O"])
    total = np.array([span_counts(gold, pred), span_counts(*second)]).sum(0)
    assert tuple(total) == (2, 2, 2) and float(f1_of(total)) == pytest.approx(0.5)
    from seqeval.metrics import f1_score, precision_score, recall_score

    assert f1_score([gold, second[0]], [pred, second[1]]) == pytest.approx(0.5)
    assert precision_score([gold], [pred]) == pytest.approx(1 / 3) and recall_score([gold], [pred]) == pytest.approx(1 / 3)
    # conlleval's reading of an ill-formed prediction: I-X after O opens an X entity; a change of type closes one
    assert entities(["O", "I-PER", "I-PER", "I-LOC"]) == {("PER", 1, 2), ("LOC", 3, 3)}
    assert float(f1_of(np.zeros(3))) == 0.0


def test_only_labelled_positions_enter_the_view():
    task = get_task("ner")
    logits = torch.randn(2, 5, 9)
    labels = torch.tensor([[IGNORE, 7, IGNORE, 0, IGNORE], [IGNORE, 1, 2, IGNORE, IGNORE]])
    batch = {"labels": labels, "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}
    view = task.view({"logits": logits}, batch)["logits"]
    assert torch.equal(view, torch.stack([logits[0, 1], logits[0, 3], logits[1, 1], logits[1, 2]]))
    assert torch.equal(task.targets(batch)["labels"], torch.tensor([7, 0, 1, 2]))


def test_token_kd_is_a_hand_worked_kl_per_labelled_position_with_t_squared_and_no_teacher_gradient():
    task = get_task("ner")
    labels = torch.tensor([[IGNORE, 0, IGNORE, 1, IGNORE]])
    batch = {"labels": labels, "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    z_s = torch.zeros(1, 5, 2, requires_grad=True)
    z_t = torch.tensor([[[9.0, -9.0], [0.0, 2 * np.log(3.0)], [5.0, 5.0], [2 * np.log(3.0), 0.0], [-3.0, 8.0]]], dtype=torch.float32, requires_grad=True)
    cfg = LossConfig(temperature=2.0)
    loss = LOSSES["kd"].fn(task.view({"logits": z_s}, batch), task.view({"logits": z_t}, batch), batch["attention_mask"], cfg)
    # at T = 2 the teacher's labelled rows are (1/4, 3/4) and (3/4, 1/4), the student's (1/2, 1/2):
    # KL = 1/4 log(1/2) + 3/4 log(3/2) per row, times T^2 = 4
    expected = 4 * (0.25 * np.log(0.5) + 0.75 * np.log(1.5))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert z_t.grad is None or not z_t.grad.any()
    assert not z_s.grad[0, [0, 2, 4]].any() and z_s.grad[0, [1, 3]].abs().sum() > 0  # [CLS], a later sub-token, [SEP]: inert
    # what an ignored position holds changes nothing
    z_t2 = z_t.detach().clone()
    z_t2[0, [0, 2, 4]] = torch.randn(3, 2) * 10
    again = LOSSES["kd"].fn(task.view({"logits": z_s.detach()}, batch), task.view({"logits": z_t2}, batch), batch["attention_mask"], cfg)
    assert float(again) == pytest.approx(expected, rel=1e-5)
    mse = LOSSES["kd_mse"].fn(task.view({"logits": z_s.detach()}, batch), task.view({"logits": z_t2}, batch), batch["attention_mask"], cfg)
    assert float(mse) == pytest.approx((0 + (2 * np.log(3.0)) ** 2 + (2 * np.log(3.0)) ** 2 + 0) / 2, rel=1e-5)


def test_the_store_holds_the_online_teachers_tag_distributions(tmp_path, tokenizer, train):
    from attnkd.signals import SignalStore, extract, online_batch

    task = get_task("ner")
    ws = windows(tokenizer, train.sentences[:12], NAMES, 24, "first")
    split = Split([np.array(w.input_ids, dtype=np.int32) for w in ws], np.stack([np.pad(w.labels, (0, 24 - len(w.labels)), constant_values=IGNORE) for w in ws]))
    torch.manual_seed(0)
    teacher = BertForTokenClassification(tiny_config(num_labels=9)).eval()
    wanted = {"attn": [1], "hidden": [2]}
    extract(teacher, split, wanted, "float32", 5, 0, tmp_path, {"split": "train", "teacher_sha256": "x", "inputs_sha256": "y", "max_length": 24}, task)
    store = SignalStore(tmp_path)
    assert store.manifest.token_classes == ["logits"] and store.outputs["logits"].shape == (int(split.lengths.sum()), 9)
    idx = np.array([3, 0, 7])
    batch = task.collate(split, idx, 0)
    stored, tensors = store.signals(idx, batch, wanted)
    live, live_tensors = online_batch(teacher, batch, wanted, task)
    real = batch["attention_mask"].bool()
    assert torch.allclose(stored["logits"][real], live["logits"][real], atol=1e-5)
    assert task.view(stored, batch)["logits"].shape[0] == int((batch["labels"] >= 0).sum())
    assert torch.allclose(task.view(stored, batch)["logits"], task.view(live, batch)["logits"], atol=1e-5)
    assert torch.allclose(tensors[("hidden", 2)][real], live_tensors[("hidden", 2)][real], atol=1e-5)


def test_a_bilstm_tagger_tags_every_token_and_keeps_padding_inert(tiny_model_dir):
    from attnkd.params import StudentParams
    from attnkd.students import build_student, get_family

    task = get_task("ner")
    teacher = BertForTokenClassification(tiny_config(num_labels=9))
    sp = StudentParams(family="lstm", num_layers=1, hidden_size=8, embedding_size=16, init="embeddings")
    assert task.student_kinds(sp) == ("hidden",) and get_family("lstm").serves(task) == ""
    student = build_student(teacher, sp, [(2, 1)], 0, task).eval()
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 7592, 2088, 2003, 2204, 102]])
    mask = (ids != 0).long()
    out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert out.logits.shape == (2, 6, 9) and out.hidden_states[1].shape == (2, 6, 16)
    alone = student(input_ids=ids[:1, :4], attention_mask=mask[:1, :4])
    assert torch.allclose(out.logits[0, :4], alone.logits[0], atol=1e-5)
    from attnkd.params import DistillParams
    from attnkd.objective import check_compatible

    with pytest.raises(UserError, match="attn_kl reads attn of each mapped student layer, which a lstm student does not have"):
        check_compatible({"ce": 1.0, "attn_kl": 1.0}, DistillParams(), sp, 4, 32, task)


def test_a_hub_split_of_tokens_and_class_label_tags_reads_as_sentences():
    import datasets

    from attnkd.tasks.ner import hub_sentences

    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]))})
    ds = datasets.Dataset.from_dict({"tokens": [["Peter", "Blackburn"], [], ["in", "New", "York"]], "ner_tags": [[1, 2], [], [0, 4, 4]]}, features=features)
    read = hub_sentences(ds, "hub conll2003/- split 'train'")
    assert [s.words for s in read.sentences] == [["Peter", "Blackburn"], ["in", "New", "York"]]
    assert [s.tags for s in read.sentences] == [["B-PER", "I-PER"], ["O", "B-LOC", "I-LOC"]] and read.repaired == 1
    with pytest.raises(UserError, match="expected columns `tokens` and `ner_tags`"):
        hub_sentences(datasets.Dataset.from_dict({"tokens": [["a"]], "tags": [["O"]]}), "hub x")
