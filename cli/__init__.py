"""The command line. Each module registers its subcommands; with no subcommand the UI starts."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from embeddings.embedding import EmbeddingError
from models.base import ModelError

# Each module has `register(subparsers)` and sets `func(args) -> int` on its parsers.
COMMAND_MODULES = [
    "cli.serve",
    "cli.models_cmd",
    "cli.embedding_cmds",
    "cli.preprocess_cmd",
    "cli.train_cmd",
    "cli.generate_cmd",
    "cli.evaluate_cmds",
]


# Other installs' folders, read in place (repeatable; also `settings.toml` in the data folder).
FOLDER_FLAGS = {
    "--models-dir": "another checkpoints folder to list (e.g. A1111's models/Stable-diffusion); repeatable",
    "--embeddings-dir": "another embeddings folder to read; the first one receives new and trained embeddings; "
                        "repeatable",
}


class CliError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="Create, train, inspect and export textual-inversion embeddings for Stable Diffusion.",
    )
    parser.add_argument("--data-dir", default=None, help="data folder (default ./data)")
    for flag, what in FOLDER_FLAGS.items():
        parser.add_argument(flag, action="append", default=None, metavar="FOLDER", help=what)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    # Global options work after the command word too (`app.py create x --data-dir d`).
    for command in sub.choices.values():
        known = {o for a in command._actions for o in a.option_strings}
        if "--data-dir" not in known:
            command.add_argument("--data-dir", default=argparse.SUPPRESS, help="data folder (default ./data)")
        if "--verbose" not in known:
            command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
        for flag, what in FOLDER_FLAGS.items():
            if flag not in known:
                command.add_argument(flag, action="append", default=argparse.SUPPRESS, metavar="FOLDER", help=what)
    return parser


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def main(argv: list[str]) -> int:
    parser = build_parser()
    if not set(argv) & (_commands(parser) | {"-h", "--help"}):
        argv = ["serve", *argv]  # `python app.py --port 7861` starts the UI, like `python app.py`
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return guarded(args.func, args)


def guarded(func, args: argparse.Namespace) -> int:
    """Run a command; the errors a user can act on become one `error:` line and exit code 2
    (the traceback only with --verbose), Ctrl-C becomes 130. One home for that rule: the
    data-parallel train path, which must exit on its own terms, uses it too."""
    try:
        return int(func(args) or 0)
    except (CliError, EmbeddingError, ModelError, ValueError, OSError) as e:
        if getattr(args, "verbose", False):
            logging.exception("command failed")
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
