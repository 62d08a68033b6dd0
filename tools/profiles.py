"""Ready-made params for a data set: print, or run, the `dvc exp run` that applies a profile.

    python tools/profiles.py sst2              # print the command
    python tools/profiles.py sst2 --run        # run it (extra args go to dvc exp run)
    python tools/profiles.py sst2 --run -- -S data.limit_per_class=2000   # more dvc exp run args

A profile is a YAML file in profiles/ with the params sections it changes; every key becomes one
`-S key=value`, with the value written as YAML so DVC reads it back unchanged (`-S ++key=value`
for a key params.yaml does not have, such as a new entry of `students`). A profile's `methods`
is the whole set of methods: params.yaml's other methods, and weights a method of both does not
give, are removed (`-S ~methods.at`).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from attnkd.errors import UserError, run_stage
from attnkd.params import Params
from attnkd.tracking import flatten

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"


def load_profile(name: str) -> dict:
    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise UserError(f"{path}: no such profile (profiles: {', '.join(known)})")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


REPLACED = ("methods",)  # sections a profile gives whole: a set of named entries, not defaults to merge into


def merge(base: dict, profile: dict, top: bool = True) -> dict:
    """A params dict with the profile's keys applied (what `dvc exp run -S` does); a section of
    REPLACED is taken from the profile as it is."""
    out = dict(base)
    for key, value in profile.items():
        replaced = top and key in REPLACED
        out[key] = merge(base.get(key, {}), value, top=False) if isinstance(value, dict) and not replaced else value
    return out


def profile_params(name: str) -> Params:
    """params.yaml with a profile applied ("" = params.yaml as it is)."""
    base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    return Params.model_validate(merge(base, load_profile(name)) if name else base)


def overrides(profile: dict, base: dict) -> list[str]:
    """`key=value` per leaf of the profile; `++key=value` for a key params.yaml lacks (a new student);
    `~key` for what a REPLACED section of params.yaml has and the profile's lacks (a whole method,
    or one weight of a method both have)."""
    known, given = flatten(base), flatten(profile)
    removed = []
    for section in REPLACED:
        if section not in profile:
            continue
        for name, entry in base.get(section, {}).items():
            if name not in profile[section]:
                removed.append(f"~{section}.{name}")
            else:
                removed += [f"~{key}" for key in flatten({section: {name: entry}}) if key not in given]
    return removed + [f"{'' if key in known else '++'}{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"
                      for key, value in given.items()]


def quote(arg: str) -> str:
    """Shell quoting that stays readable: double quotes around YAML's single-quoted values."""
    if arg == shlex.quote(arg) or any(c in arg for c in '"$`\\!'):
        return shlex.quote(arg)
    return f'"{arg}"'


def command(name: str, extra: list[str]) -> list[str]:
    cmd = ["dvc", "exp", "run", "-n", name]
    base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for item in overrides(load_profile(name), base):
        cmd += ["-S", item]
    return cmd + extra


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="profile name (a file in profiles/)")
    p.add_argument("--run", action="store_true", help="run the command instead of printing it")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])  # what follows `--` goes to dvc exp run unchanged
    cmd = command(args.name, argv[cut + 1 :])
    if not args.run:
        print(" ".join(quote(a) for a in cmd))
        return
    try:
        sys.exit(subprocess.call(cmd, cwd=REPO))
    except FileNotFoundError:
        raise UserError("dvc: command not found; activate the project's environment (. .venv/bin/activate)") from None


if __name__ == "__main__":
    run_stage(main)
