"""The `edgemm` command line.

Each subcommand lives in its own module under edgemm/commands/ with ``add_arguments(parser)`` and
``run(args) -> int``; importing them is cheap (heavy modules are imported inside ``run``), so ``--help``
works on any machine. A user error (EdgemmError) becomes one line on stderr and exit code 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

import edgemm.commands as pkg
from edgemm import __version__
from edgemm.errors import EdgemmError, check_numbers

# The order subcommands are listed in; modules found under edgemm/commands/ but not named here follow.
ORDER = ("demo", "info", "bench", "convert", "eval", "run")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # bad command-line input is bad input: one line, exit 1
        self.exit(1, f"{self.prog}: error: {message}\n")


def _command_modules():
    found = {m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")}
    names = [n for n in ORDER if n in found] + sorted(found - set(ORDER))
    return [importlib.import_module(f"edgemm.commands.{n}") for n in names]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgemm", description="Edge inference runtime for audio-visual fusion models.")
    parser.add_argument("--version", action="version", version=f"edgemm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (debug messages)")
    # -v after the subcommand too (`edgemm run ... -v`); SUPPRESS keeps a -v given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log more (debug messages)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in _command_modules():
        name = mod.__name__.rsplit(".", 1)[1]
        doc = (mod.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc, parents=[common],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _numbers=getattr(mod, "NUMBER_BOUNDS", {}))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="edgemm: %(levelname)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        check_numbers(vars(args), args._numbers)  # NaN, infinities, sizes that would exhaust memory: one line
        return int(args._run(args) or 0)
    except EdgemmError as exc:
        print(f"edgemm {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A path the user named that cannot be read or written (permissions, a full disk): their problem
        # to fix, in one line. OSErrors without a file name are not theirs and keep the traceback.
        if not exc.filename:
            raise
        print(f"edgemm {args.command}: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edgemm info x | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
