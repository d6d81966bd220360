"""The `novomap` command: a thin dispatcher over one module per subcommand.

Each command module defines HELP (one line), EXAMPLE (a command line), add_arguments(parser)
and run(args) -> int. Errors that are the user's to fix (NovomapError) end in one line on
stderr and exit code 2; a traceback is shown only with --verbose.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from novomap import __version__
from novomap.errors import NovomapError
from novomap.runtime import flush_denormals, limit_blas_spinning, limit_openmp_spinning, tune_allocator

# subcommand name -> module under novomap.commands
COMMANDS: dict[str, str] = {
    "reconstruct": "reconstruct",
    "simulate": "simulate",
    "compare": "compare",
    "demo": "demo",
    "initial-model": "initial_model",
    "report": "report",
    "align-symmetry": "align_symmetry",
    "detect-symmetry": "detect_symmetry",
}


def _load(module_name: str) -> ModuleType:
    return importlib.import_module(f"novomap.commands.{module_name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="novomap",
        description="De novo 3D initial models from 2D cryo-EM particles (RELION's VDAM), symmetry and tools.",
    )
    parser.add_argument("--version", action="version", version=f"novomap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = _load(module_name)
        example = getattr(module, "EXAMPLE", None)
        command_parser = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog=f"example:\n  {example}" if example else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command_parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug output")
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def given_options(argv: list[str] | None) -> set[str]:
    """The destinations the command line sets itself, not left at their defaults (what `initial-model
    --continue` leaves to the checkpoint's run): argv parsed again with every default suppressed."""
    parser = build_parser()
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            action.default = argparse.SUPPRESS
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return set(vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    limit_openmp_spinning()  # before the commands' modules import torch
    limit_blas_spinning()  # and numpy
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    args.given_options = given_options(argv)
    tune_allocator()
    flush_denormals()
    try:
        return int(args._run(args) or 0)
    except NovomapError as error:
        if args.verbose:
            raise
        print(f"novomap {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"novomap {args.command}: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return getattr(interrupt, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
