"""The transformer student family: a smaller model of the teacher's own class (so with the task's
head), initialised from the teacher's layers or embeddings (DistilBERT-style)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from attnkd.errors import UserError
from attnkd.models import EAGER, layer_tensor, principal_projection

if TYPE_CHECKING:
    from transformers import BertConfig, BertPreTrainedModel

    from attnkd.params import StudentParams


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



class Transformer:
    """Students of the teacher's class: per-layer self-attention, its scores, Q/K/V and hidden
    states, and the [CLS] query row, on every layer the layer map pairs."""

    name = "transformer"
    kinds = ("attn", "scores", "q", "k", "v", "hidden", "cls")
    attention = "maps"

    def layers(self, sp) -> int:
        return sp.num_layers

    def width(self, sp) -> int:
        return sp.hidden_size

    def heads(self, sp) -> int:
        return sp.num_heads

    def serves(self, task) -> str:
        return ""

    def for_task(self, task):
        return self

    def build(self, teacher, sp, pairs: list[tuple[int, int]], seed: int):
        student = type(teacher)(student_config(teacher.config, sp))
        copy_from_teacher(teacher, student, sp, pairs)
        return student

    def layer_tensor(self, kind: str, layer: int, out, cap: dict) -> torch.Tensor:
        return layer_tensor(kind, layer, out, cap)

    def describe(self, sp) -> str:
        return f"{sp.num_layers} layers, hidden {sp.hidden_size}, {sp.num_heads} heads, feed-forward {sp.intermediate_size}"


FAMILY = Transformer()
