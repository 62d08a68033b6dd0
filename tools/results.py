"""Write the recorded default run's tables into README.md and docs/results.md, from reports/.

    python tools/results.py           # regenerate the marked blocks
    python tools/results.py --check   # exit 1 when a block differs from what reports/ gives
    python tools/results.py --run ../mt --code 2064c9f --doc docs/translation.md --block multi30k
                                      # a profile's run in another clone: its tables into one block of a doc
                                      # (--also TITLE: one more section of its report, e.g. a per-type table)

The tables are cut from reports/report.md (which the report stage renders from the metrics) and
stamped with the commit that last recorded reports/summary.json, so a number in the docs always
says which run it came from and can never be pasted by hand out of step with reports/.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"quality": "Quality on the test split", "efficiency": "Efficiency", "agreement": "Attention agreement with the teacher"}
BLOCK = re.compile(r"(<!-- results:(\w+) -->\n).*?(<!-- /results:\2 -->)", re.S)


def section_table(report: str, title: str) -> str:
    """The first Markdown table under `## <title>` in the report."""
    body = report.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(l for l in body.splitlines() if l.startswith("|"))


def recorded_commit(root: Path) -> str:
    out = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", "reports/summary.json"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() or "uncommitted"


def blocks(root: Path) -> dict[str, str]:
    report = (root / "reports/report.md").read_text(encoding="utf-8")
    stamp = f"From `reports/report.md` as recorded in commit {recorded_commit(root)} (`dvc.lock` there pins the code, params and data)."
    tables = {k: section_table(report, title) for k, title in SECTIONS.items()}
    return {
        "headline": f"{tables['quality']}\n\n{stamp}",
        "default": "\n\n".join([tables["quality"], tables["efficiency"], tables["agreement"], stamp]),
    }


def run_block(run: Path, code: str, also: tuple[str, ...] = ()) -> str:
    """A profile run's quality, efficiency and agreement tables (and the sections titled `also`),
    from its reports/report.md, stamped with the commit whose code made them (the run's clone may
    carry uncommitted params). A section the report lacks (no attention to agree on) is left out."""
    report = (run / "reports/report.md").read_text(encoding="utf-8")
    stamp = f"From the run's `reports/report.md` (code of commit {code}; params: the profile)."
    titles = [t for t in (*SECTIONS.values(), *also) if f"## {t}\n" in report]
    return "\n\n".join([*(section_table(report, title) for title in titles), stamp])


def render(text: str, generated: dict[str, str]) -> str:
    """The text with each marked block that `generated` names replaced; other blocks as they are."""
    return BLOCK.sub(lambda m: f"{m.group(1)}{generated[m.group(2)]}\n{m.group(3)}" if m.group(2) in generated else m.group(0), text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if a block is out of date")
    p.add_argument("--root", type=Path, default=REPO)
    p.add_argument("--run", type=Path, help="another clone that ran a profile: write its tables into --doc's --block")
    p.add_argument("--code", help="with --run: the commit of the code that ran")
    p.add_argument("--doc", type=Path, help="with --run: the doc to write into")
    p.add_argument("--block", help="with --run: the block's name (<!-- results:NAME -->)")
    p.add_argument("--also", action="append", default=[], help="with --run: another section of the report to copy (its title; repeatable)")
    args = p.parse_args()
    if args.run:
        text = args.doc.read_text(encoding="utf-8")
        if f"<!-- results:{args.block} -->" not in text:
            print(f"{args.doc}: no <!-- results:{args.block} --> block", file=sys.stderr)
            return 2
        args.doc.write_text(render(text, {args.block: run_block(args.run, args.code, tuple(args.also))}), encoding="utf-8")
        print(f"wrote: {args.doc} ({args.block})")
        return 0
    generated = blocks(args.root)
    stale = []
    for path in (args.root / "README.md", args.root / "docs/results.md"):
        text = path.read_text(encoding="utf-8")
        new = render(text, generated)
        if new != text:
            stale.append(str(path.relative_to(args.root)))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"out of date with reports/: {', '.join(stale)}; run `python tools/results.py`", file=sys.stderr)
        return 1
    print(f"{'checked' if args.check else 'wrote'}: README.md, docs/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
