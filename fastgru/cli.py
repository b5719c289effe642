"""The ``fastgru`` command."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"bench": "fastgru.benchmark"}
    if not argv or argv[0] not in commands:
        print(f"usage: fastgru {{{','.join(commands)}}} [options]  (fastgru COMMAND --help)",
              file=sys.stderr)
        return 2
    from importlib import import_module

    return import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
