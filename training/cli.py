"""`ensemble-train`: one argparse parser; each subcommand lives in its own module with `register()`.

Adding a subcommand is one line: append its module to `COMMANDS`. A module's `register(subparsers)`
adds its parser and sets ``func=run`` where ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from training import cmd_ensemble, cmd_fit, cmd_inspect, cmd_lr_find, cmd_search
from training.args import add_common_args, load_from_args
from training.data import DataError
from training.export import ExportError
from training.pipeline import SettingError

COMMANDS: list[ModuleType] = [cmd_inspect, cmd_fit, cmd_lr_find, cmd_search, cmd_ensemble]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line and exit code 2, as argparse does, but without the multi-line usage block.
        self.exit(2, f"error: {self.prog.split()[-1]}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ensemble-train", description="Train BatchNorm networks and ensembles.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingError as e:  # the library names a field; the user knows it as a flag
        print(f"error: --{e.field.replace('_', '-')} {e.message}", file=sys.stderr)
        return 2
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. an --out folder that cannot be written
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except ExportError as e:  # not the user's input: a graph that onnxruntime computes differently
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "add_common_args", "build_parser", "load_from_args", "main"]
