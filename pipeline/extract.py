"""Stage extract: run the teacher once over the training split and store its signals.

Stores the teacher's outputs and the tensors the plan stage lists (for the teacher layers the
distil layer map pairs with a student layer of any student in distill.students, exactly the
tensors the configured methods' losses read: attention probabilities or scores, Q/K/V
projections, hidden states; for an encoder-decoder teacher its translations, top-k and
attention maps), ragged and in extract.dtype, with a verifying manifest. The task writes its
store (`Task.write_store`).
"""

from __future__ import annotations

from pathlib import Path

from attnkd import data
from attnkd.compute import start
from attnkd.errors import UserError, run_stage
from attnkd.io import read_json
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
    planned = read_json(args.plan)["tensors"] if args.plan else task.plan_store(params, read_json(args.teacher / "config.json"))
    print(task.write_store(params, args.teacher, meta, train, planned, args.out, compute))


if __name__ == "__main__":
    run_stage(main)
