"""Write README.md's settings table from `sidecar.settings.Settings`.

The table sits between `<!-- settings:begin -->` and `<!-- settings:end -->`.
`--check` exits 1 if README.md's table differs from what the code says (the
test suite runs it), so a setting cannot be added without its documentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from sidecar.settings import Settings, env_name, flag_name

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def table() -> str:
    lines = ["| flag | environment | default | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default
        if isinstance(default, bool):
            flag = f"`{flag_name(f.name)}` / `--no-{f.name.replace('_', '-')}`"
            default = str(default).lower()
        else:
            flag = f"`{flag_name(f.name)}`"
        choices = f.metadata["choices"]
        text = f.metadata["help"] + (f" One of {', '.join(choices)}." if choices else "")
        shown = f"`{default}`" if str(default) else "(empty)"
        lines.append(f"| {flag} | `{env_name(f.name)}` | {shown} | {text} |")
    return "\n".join(lines)


def render(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    current = README.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("README.md's settings table is stale: run scripts/settings_table.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
