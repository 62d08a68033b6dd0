"""Stage extract: run the teacher once over the training split and store its signals.

Stores soft logits and, for the teacher layers the distil layer map pairs with a student layer
(of any student in distill.students),
exactly the tensors the configured methods' losses read (attention probabilities or scores,
Q/K/V projections, hidden states), ragged and in extract.dtype, with a verifying manifest.
"""

from __future__ import annotations

from pathlib import Path

from attnkd import data, signals
from attnkd.compute import start
from attnkd.errors import UserError, run_stage
from attnkd.io import atomic_dir, sha256_file
from attnkd.losses import resolve_layer_map
from attnkd.objective import wanted_tensors
from attnkd.models import load_classifier, load_tokenizer, weights_file
from attnkd.stage import parser, setup


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--prepared", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True, help="teacher model dir")
    p.add_argument("--out", type=Path, required=True, help="signal store dir")
    args = p.parse_args()
    params = setup(args.params)
    compute = start(params.compute.device, params.compute.precision)
    if compute.distributed:
        raise UserError("extract runs in one process (it is one pass of the teacher); start it without torchrun")

    meta = data.load_meta(args.prepared)
    train = data.load_split(args.prepared, "train")
    model = load_classifier(args.teacher).to(compute.device)
    pad_id = load_tokenizer(args.teacher).pad_token_id
    layers = model.config.num_hidden_layers
    pairs = sorted({p for name in params.distill.students for p in resolve_layer_map(params.distill.layer_map, layers, params.students[name].num_layers)})
    # what every configured method's losses read, for the teacher layers some student's map pairs
    wanted = wanted_tensors([m.weights() for m in params.methods.values()], pairs, params.distill.attn_mse_on)
    describe = {
        "split": "train",
        "teacher_sha256": sha256_file(weights_file(args.teacher)),
        "inputs_sha256": meta["splits"]["train"]["inputs_sha256"],
        "max_length": meta["max_length"],
        "teacher_precision": compute.precision,  # of the forward pass; stored values are in `dtype`
    }
    with atomic_dir(args.out) as tmp:
        manifest = signals.extract(model, train, wanted, params.extract.dtype, params.extract.batch_size, pad_id, tmp, describe, compute)
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"extract: {len(train)} examples, {wanted}, {size / 2**20:.1f} MiB -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
