"""Stage augment: the transfer set, unlabelled variants of the training texts (Tang et al. 2019).

augment.copies variants of every training text (labelled or not), made with masking, nearest-
neighbour substitution in the teacher's word-embedding space and n-gram sampling (see
attnkd.augment), tokenised like the prepared data and written as unlabelled rows. extract
labels them with the teacher (soft labels and the attention the methods read) and distill trains
on the training split and these rows; the hard-label loss sees gold rows only. With
augment.copies: 0 (the default) the transfer set is empty and nothing downstream changes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from attnkd import augment, data
from attnkd.artifacts import SplitInfo, TransferMeta
from attnkd.errors import UserError, run_stage
from attnkd.io import atomic_dir, sha256_file
from attnkd.models import load_tokenizer, resolve_init, weights_file
from attnkd.stage import parser, setup


def word_embeddings(model_dir: Path) -> torch.Tensor:
    """The (V, H) word-embedding table of a saved BERT, read from its safetensors."""
    tensors = load_file(str(weights_file(model_dir)))
    keys = [k for k in tensors if k.endswith("word_embeddings.weight")]
    if len(keys) != 1:
        raise UserError(f"{weights_file(model_dir)}: no single word-embedding table (found {keys}); augment.substitute_p needs one")
    return tensors[keys[0]]


def main() -> None:
    p = parser(__doc__, prepared="prepared data dir", out="transfer set dir (transfer.parquet, transfer.json)")
    args = p.parse_args()
    params = setup(args.params)
    ap = params.augment
    meta = data.load_meta(args.prepared)
    data.load_split(args.prepared, "train")  # checks the file against meta.json
    frame = pd.read_parquet(args.prepared / "train.parquet", columns=["text", "text_pair"])
    texts, pairs = frame["text"].tolist(), frame["text_pair"].tolist() if meta.pair else None
    init = resolve_init(params.teacher.init)
    tokenizer = load_tokenizer(init)
    subs = augment.neighbours(tokenizer, word_embeddings(init), texts + (pairs or [])) if ap.copies and ap.substitute_p else {}
    out_t, out_p, _, counts = augment.transfer_texts(texts, pairs, ap, params.seed, subs)
    enc = data.tokenize(tokenizer, out_t, out_p if meta.pair else None, meta.max_length)
    with atomic_dir(args.out) as tmp:
        data.write_split(tmp / "transfer.parquet", out_t, out_p, [data.UNLABELLED] * len(out_t), enc)
        rules = {"words": counts.words, "masked": counts.masked, "substituted": counts.substituted, "ngrams": counts.ngrams,
                 "variants": counts.variants, **{f"dropped_{k}": v for k, v in counts.dropped.items()}}
        TransferMeta(rows=len(out_t), texts=len(texts), rules=rules, train_inputs_sha256=meta.splits["train"].inputs_sha256,
                     split=SplitInfo(examples=len(out_t), inputs_sha256=data.ids_digest(enc.input_ids), sha256=sha256_file(tmp / "transfer.parquet"))).write(tmp)
    print(f"augment: {len(out_t)} transfer rows from {len(texts)} training texts ({rules}) -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
