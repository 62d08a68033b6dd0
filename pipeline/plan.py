"""Stage plan: the teacher tensors the signal store must hold, and for which layers.

The union, over every configured method and student in distill.students, of the tensor kinds the
methods' losses read (losses.LOSSES) at the teacher layers the layer map pairs with a student
layer. Written as a small JSON file that extract depends on, instead of on the methods' weights:
a change of loss weights that needs no other tensor leaves the file byte-identical, so DVC does
not re-run extract (nor any student but the changed method's).
"""

from __future__ import annotations

from attnkd.errors import run_stage
from attnkd.io import atomic_write_json, read_json
from attnkd.stage import parser, setup
from attnkd.tasks import get_task


def main() -> None:
    p = parser(__doc__, teacher="teacher model dir (its depth)", out="the plan (JSON)")
    args = p.parse_args()
    params = setup(args.params)
    wanted = get_task(params.task).plan_store(params, read_json(args.teacher / "config.json"))
    atomic_write_json(args.out, {"tensors": wanted})
    print(f"plan: store {wanted or 'logits only'} -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
