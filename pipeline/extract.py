"""Stage extract: run the teacher once over the training split and store its signals.

Task translation: the encoder-decoder teacher's store (attnkd.pair_store): its translations of the
training sources (sequence-level KD), its top-k per target position (word-level KD) and its
cross-attention maps, on the targets each method trains on.

Stores soft logits and the tensors the plan stage lists (for the teacher layers the distil layer
map pairs with a student layer of any student in distill.students, exactly the tensors the
configured methods' losses read: attention probabilities or scores, Q/K/V projections, hidden
states), ragged and in extract.dtype, with a verifying manifest.
"""

from __future__ import annotations

from pathlib import Path

from attnkd import data, signals
from attnkd.compute import start
from attnkd.errors import UserError, run_stage
from attnkd.io import atomic_dir, read_json, sha256_file
from attnkd.objective import store_plan
from attnkd.pair_store import extract_pairs
from attnkd.models import load_model, load_tokenizer, weights_file
from attnkd.stage import parser, setup
from attnkd.tasks import get_task


def main() -> None:
    p = parser(__doc__, prepared="prepared data dir", teacher="teacher model dir", out="signal store dir")
    p.add_argument("--plan", type=Path, help="the tensors to store, written by the plan stage (default: worked out from params)")
    p.add_argument("--transfer", type=Path, help="the transfer set dir written by augment: its rows are labelled after the training split's")
    args = p.parse_args()
    params = setup(args.params)
    compute = start(params.compute.device, params.compute.precision)
    if compute.distributed:
        raise UserError("extract runs in one process (it is one pass of the teacher); start it without torchrun")

    meta = data.load_meta(args.prepared)
    train = data.load_training(args.prepared, args.transfer)  # the training split, then the transfer set
    task = get_task(params.task)
    if params.task == "translation":
        return extract_translation(args, params, train, compute.device)
    model = load_model(args.teacher, task).to(compute.device)
    pad_id = load_tokenizer(args.teacher).pad_token_id
    planned = read_json(args.plan)["tensors"] if args.plan else store_plan(params, model.config.to_dict())
    max_bytes = int(params.extract.max_gb * 2**30)
    wanted, online = signals.within_budget(train.lengths, planned, model.config.num_attention_heads, model.config.hidden_size, params.extract.dtype, max_bytes)
    describe = {
        "split": "train",
        "teacher_sha256": sha256_file(weights_file(args.teacher)),
        "inputs_sha256": data.ids_digest(train.input_ids),
        "max_length": meta.max_length,
        "teacher_precision": compute.precision,  # of the forward pass; stored values are in `dtype`
    } | ({"online": online, "max_bytes": max_bytes} if online else {})
    with atomic_dir(args.out) as tmp:
        manifest = signals.extract(model, train, wanted, params.extract.dtype, params.extract.batch_size, pad_id, tmp, describe, compute, task)
    size = sum(f.bytes for f in manifest.files.values())
    left = f"; over extract.max_gb {params.extract.max_gb:g}, left to distill (online): {online}" if online else ""
    print(f"extract: {len(train)} examples, {wanted}, {size / 2**20:.1f} MiB -> {args.out}{left}")


def extract_translation(args, params, train, device) -> None:
    """An encoder-decoder teacher's store (attnkd.pair_store): its translations, top-k and
    cross-attention, as the plan lists them for the methods' targets."""
    ep = params.extract
    model = load_model(args.teacher, get_task(params.task)).to(device)
    planned = read_json(args.plan)["tensors"] if args.plan else store_plan(params, model.config.to_dict())
    describe = {"teacher_sha256": sha256_file(weights_file(args.teacher)), "inputs_sha256": data.ids_digest([*train.input_ids, *train.extra["target_ids"]])}
    with atomic_dir(args.out) as tmp:
        manifest = extract_pairs(model, train, planned, ep.topk, ep.beam, ep.dtype, ep.batch_size, tmp, describe, device)
        size = sum(f.bytes for f in manifest.files.values())
        if size > ep.max_gb * 2**30:
            raise UserError(f"params.yaml: extract.max_gb: the translation store takes {size / 2**30:.2f} GiB, over {ep.max_gb:g}; "
                            "raise it, or lower extract.topk or the mapped decoder layers")
    print(f"extract: {len(train)} pairs, {planned}, {size / 2**20:.1f} MiB of extract.max_gb {ep.max_gb:g} GiB -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
