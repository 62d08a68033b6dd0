"""The recurrent student family: a BiLSTM with additive attention pooling and a classifier, or,
for a task with a class row per token (token classification), a BiLSTM tagger.

    embeddings (V, E) -> BiLSTM (num_layers, hidden per direction) -> h (B, T, 2H)
    e_t = v^T tanh(W h_t + b)            additive attention (Bahdanau et al. 2015) over the tokens
    a = softmax(e over real tokens)      the pooling row (B, T): the student's one attention view
    z = classifier(sum_t a_t h_t)        logits (B, C)

It reads the teacher's tokens (the teacher's tokenizer and vocabulary), so its pooling row lines
up with the teacher's `[CLS]`-query attention row token for token, and can start from the
teacher's word embeddings (projected onto their top principal directions when narrower).
Padding never changes its outputs: the LSTM runs on packed sequences and the pooling softmax
masks padded tokens. A transformers `PreTrainedModel`, so it saves and loads like every other
model (`save_pretrained`: safetensors + config.json, model_type `attnkd-bilstm`).

The tagger (model_type `attnkd-bilstm-tagger`) is the same embeddings and BiLSTM with a linear
classifier on every token's state, logits (B, T, C), and no pooling: it has no attention, so it
learns from the teacher's tag distributions (kd) and its per-token states (hidden_mse), not from
attention maps. A softmax per token (no CRF): Hinton KD matches the teacher's per-token
distribution exactly, where a CRF's would be a sequence distribution the teacher does not give.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

MODEL_TYPE = "attnkd-bilstm"


class BiLSTMConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 30522, embedding_size: int = 384, hidden_size: int = 256, num_layers: int = 1,
                 dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.embedding_size, self.hidden_size = vocab_size, embedding_size, hidden_size
        self.num_layers, self.dropout = num_layers, dropout


@dataclass
class BiLSTMOutput(ModelOutput):
    logits: torch.Tensor | None = None  # (B, C)
    pooling: torch.Tensor | None = None  # (B, T) attention-pooling weights, 0 on padding
    hidden_states: tuple[torch.Tensor, ...] | None = None  # (embeddings (B, T, E), BiLSTM outputs (B, T, 2H)) when asked for


class BiLSTMForSequenceClassification(PreTrainedModel):
    config_class = BiLSTMConfig
    base_model_prefix = "bilstm"
    main_input_name = "input_ids"

    def __init__(self, config: BiLSTMConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.lstm = nn.LSTM(config.embedding_size, config.hidden_size, num_layers=config.num_layers, batch_first=True,
                            bidirectional=True, dropout=config.dropout if config.num_layers > 1 else 0.0)
        width = 2 * config.hidden_size
        self.attn_proj = nn.Linear(width, width)  # W, b
        self.attn_score = nn.Linear(width, 1, bias=False)  # v
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LSTM):
            for name, p in module.named_parameters():
                nn.init.orthogonal_(p) if name.startswith("weight_hh") else nn.init.xavier_uniform_(p) if name.startswith("weight") else nn.init.zeros_(p)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def states(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (B, T, E) after dropout, BiLSTM outputs (B, T, 2H), 0 on padding) of a batch."""
        lengths = mask.sum(1).clamp_min(1).cpu()  # (B,)
        emb = self.dropout(self.embeddings(input_ids))  # (B, T, E)
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=input_ids.shape[1])  # (B, T, 2H), 0 on padding
        return emb, h

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, output_hidden_states: bool = False,
                **_ignored) -> BiLSTMOutput:
        """input_ids, attention_mask (B, T); token_type_ids and output_attentions are accepted
        and ignored (one sequence, one attention view: `pooling`)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        emb, h = self.states(input_ids, mask)  # (B, T, E), (B, T, 2H)
        scores = self.attn_score(torch.tanh(self.attn_proj(h))).squeeze(-1)  # (B, T)
        pooling = torch.softmax(scores.masked_fill(~mask.bool(), torch.finfo(scores.dtype).min), dim=-1)  # (B, T)
        pooled = (pooling.unsqueeze(-1) * h).sum(1)  # (B, 2H)
        logits = self.classifier(self.dropout(pooled))  # (B, C)
        return BiLSTMOutput(logits=logits, pooling=pooling, hidden_states=(emb, h) if output_hidden_states else None)


AutoConfig.register(MODEL_TYPE, BiLSTMConfig)

TAGGER_TYPE = "attnkd-bilstm-tagger"


class BiLSTMTaggerConfig(BiLSTMConfig):
    model_type = TAGGER_TYPE


@dataclass
class BiLSTMTaggerOutput(ModelOutput):
    logits: torch.Tensor | None = None  # (B, T, C)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # (embeddings (B, T, E), BiLSTM outputs (B, T, 2H)) when asked for


class BiLSTMForTokenClassification(BiLSTMForSequenceClassification):
    """embeddings (V, E) -> BiLSTM -> h (B, T, 2H) -> z_t = classifier(h_t): logits (B, T, C)."""

    config_class = BiLSTMTaggerConfig

    def __init__(self, config: BiLSTMTaggerConfig):
        PreTrainedModel.__init__(self, config)
        self.embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.lstm = nn.LSTM(config.embedding_size, config.hidden_size, num_layers=config.num_layers, batch_first=True,
                            bidirectional=True, dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(2 * config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, output_hidden_states: bool = False,
                **_ignored) -> BiLSTMTaggerOutput:
        """input_ids, attention_mask (B, T); token_type_ids and output_attentions are accepted and ignored."""
        emb, h = self.states(input_ids, torch.ones_like(input_ids) if attention_mask is None else attention_mask)  # (B, T, E), (B, T, 2H)
        logits = self.classifier(self.dropout(h))  # (B, T, C)
        return BiLSTMTaggerOutput(logits=logits, hidden_states=(emb, h) if output_hidden_states else None)


AutoConfig.register(TAGGER_TYPE, BiLSTMTaggerConfig)


def build_bilstm(teacher, sp, model_class: type = BiLSTMForSequenceClassification) -> BiLSTMForSequenceClassification:
    """A BiLSTM student (a classifier, or with BiLSTMForTokenClassification a tagger) of the
    teacher's vocabulary and labels; with init embeddings, its word embeddings are the teacher's
    (projected onto their top principal directions when narrower)."""
    from attnkd.errors import UserError
    from attnkd.models import principal_projection

    tc = teacher.config
    width = sp.embedding_size or tc.hidden_size
    if sp.init == "embeddings" and width > tc.hidden_size:
        raise UserError(f"students: init 'embeddings' needs embedding_size <= the teacher's {tc.hidden_size} (got {width}); use init: random")
    config = model_class.config_class(vocab_size=tc.vocab_size, embedding_size=width, hidden_size=sp.hidden_size, num_layers=sp.num_layers,
                          dropout=sp.hidden_dropout, num_labels=tc.num_labels, id2label=tc.id2label, label2id=tc.label2id,
                          pad_token_id=tc.pad_token_id)
    student = model_class(config)
    if sp.init == "embeddings":
        words = teacher.get_input_embeddings().weight.detach()  # (V, H_t)
        with torch.no_grad():
            student.embeddings.weight.copy_(words if width == tc.hidden_size else words @ principal_projection(words, width))
    return student


class LSTM:
    """The BiLSTM family: one attention-pooling layer over the top BiLSTM outputs (layer 1 of the
    layer map: its pooling row and its per-token states), for tasks with one output row per example."""

    name = "lstm"
    kinds = ("cls", "hidden")
    attention = "row"

    def layers(self, sp) -> int:
        return 1

    def width(self, sp) -> int:
        return 2 * sp.hidden_size  # both directions

    def heads(self, sp) -> int:
        return 1

    def serves(self, task) -> str:
        if set(task.outputs.values()) in ({"example"}, {"token_classes"}):
            return ""
        return (f"family lstm classifies examples or tags tokens (one output row per example, or a class row per token); "
                f"task {task.name!r} needs a transformer student")

    def for_task(self, task):
        """The tagger for a task of a class row per token, else this family."""
        return TAGGER if set(task.outputs.values()) == {"token_classes"} else self

    def build(self, teacher, sp, pairs: list[tuple[int, int]], seed: int) -> BiLSTMForSequenceClassification:
        return build_bilstm(teacher, sp)

    def describe(self, sp) -> str:
        return (f"BiLSTM, {sp.num_layers} layer{'s' if sp.num_layers > 1 else ''} of {sp.hidden_size} units per direction, "
                f"embeddings {sp.embedding_size or 'of the teacher width'}, attention pooling")

    def layer_tensor(self, kind: str, layer: int, out, cap: dict) -> torch.Tensor:
        if kind == "cls":
            return out.pooling  # (B, T): the attention-pooling row
        return out.hidden_states[layer]  # (B, T, 2H): the top BiLSTM outputs (hidden_states[0] is the embeddings)

    def load(self, model_dir) -> BiLSTMForSequenceClassification:
        return BiLSTMForSequenceClassification.from_pretrained(str(model_dir))


class Tagger(LSTM):
    """The BiLSTM family as it serves token classification: a classifier per token, no attention
    (layer 1 of the layer map: its per-token states)."""

    kinds = ("hidden",)
    attention = "none"

    def for_task(self, task):
        return self

    def build(self, teacher, sp, pairs: list[tuple[int, int]], seed: int) -> BiLSTMForTokenClassification:
        return build_bilstm(teacher, sp, BiLSTMForTokenClassification)

    def describe(self, sp) -> str:
        return (f"BiLSTM tagger, {sp.num_layers} layer{'s' if sp.num_layers > 1 else ''} of {sp.hidden_size} units per direction, "
                f"embeddings {sp.embedding_size or 'of the teacher width'}, a softmax classifier per token")

    def layer_tensor(self, kind: str, layer: int, out, cap: dict) -> torch.Tensor:
        return out.hidden_states[layer]  # (B, T, 2H): the top BiLSTM outputs

    def load(self, model_dir) -> BiLSTMForTokenClassification:
        return BiLSTMForTokenClassification.from_pretrained(str(model_dir))


FAMILY = LSTM()
TAGGER = Tagger()
