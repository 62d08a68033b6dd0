"""Student families: how a student of the `students` catalogue is built, initialised from the
teacher and described, and what its layers expose to the losses.

A family is chosen by `students.<name>.family`; the built-in ones are listed in
`attnkd.plugins.FAMILIES` (`transformer`, `lstm`) and imported on first use. Nothing outside this
package asks which family a student is: it asks the family.
"""

from __future__ import annotations

from typing import Protocol

import torch

from attnkd.errors import UserError
from attnkd.plugins import FAMILIES, OWN_MODEL_TYPES, load


class Family(Protocol):
    name: str
    # the per-layer tensor kinds its layers expose to the losses (models.layer_tensor reads them);
    # "cls" is the attention row of the first token: a transformer's [CLS] query row, head-averaged,
    # a BiLSTM's attention-pooling weights
    kinds: tuple[str, ...]
    # how its attention compares with the teacher's: "maps" (per-layer (H, T, T) self-attention),
    # "row" (one attention row per example, against the teacher's [CLS] row), or "none"
    attention: str

    def layers(self, sp) -> int: ...  # how many of its layers the layer map pairs with teacher layers
    def width(self, sp) -> int: ...  # the width of its per-token states (the `hidden` kind)
    def heads(self, sp) -> int: ...  # its attention heads (1: one attention row)
    def serves(self, task) -> str: ...  # "" when it can train the task, else why not (one line)
    def for_task(self, task) -> Family: ...  # the family as it serves the task (the BiLSTM's tagger for token classification)
    def build(self, teacher, sp, pairs: list[tuple[int, int]], seed: int) -> torch.nn.Module: ...  # fresh, then initialised from the teacher as sp.init says
    def describe(self, sp) -> str: ...  # the architecture in words (the report's setup)
    def layer_tensor(self, kind: str, layer: int, out, cap: dict) -> torch.Tensor: ...  # one of its `kinds` of a 1-based layer from a forward pass


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise UserError(f"students: family {name!r} is not a student family (have {', '.join(FAMILIES)})")
    return load(FAMILIES[name])


def owner_of(model_type: str) -> Family | None:
    """The family whose own architecture a saved model's config `model_type` is (None: the task's class)."""
    return load(OWN_MODEL_TYPES[model_type]) if model_type in OWN_MODEL_TYPES else None


def family_of(model) -> Family:
    """The family of a loaded student (or teacher): the one whose own architecture its config's
    model_type is, else the transformer family (a model of the task's class)."""
    return owner_of(model.config.model_type) or get_family("transformer")


def build_student(teacher, sp, pairs: list[tuple[int, int]], seed: int, task=None) -> torch.nn.Module:
    """A fresh student of the catalogue entry `sp` (built by its family as it serves `task`),
    initialised from the seed, then from the teacher as sp.init says; its word embeddings frozen
    unless sp.train_embeddings."""
    torch.manual_seed(seed)
    family = get_family(sp.family)
    student = (family if task is None else family.for_task(task)).build(teacher, sp, pairs, seed)
    student.get_input_embeddings().weight.requires_grad_(sp.train_embeddings)
    return student


__all__ = ["Family", "build_student", "family_of", "get_family", "owner_of"]
