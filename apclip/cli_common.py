"""What every apclip command shares: exit codes, `--version`, and the one-line error form.

Exit codes (the same for apclip-export, apclip-infer, apclip-prompts and apclip-bundle):
0 ok, 1 failure, 2 usage error or missing optional package, 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse

from apclip import __version__
from apclip.errors import ApclipError, MissingExtraError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # bad options (argparse uses 2 too) or a missing optional package
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class UsageError(ApclipError):
    """Options that cannot work together or a value out of range: fix the command line."""


def exit_code(exc: BaseException) -> int:
    """The exit status for an error a CLI printed as one line."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, (MissingExtraError, UsageError)) or (isinstance(exc, ImportError)
                                                            and not isinstance(exc, OSError)):
        return EXIT_USAGE
    return EXIT_FAILURE


def report_error(prog: str, exc: BaseException) -> int:
    """Print `exc` as one line on stderr under the command's name; returns its exit status."""
    import sys

    if isinstance(exc, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
    else:
        text = str(exc).strip()
        print(f"{prog}: {text.splitlines()[0] if text else type(exc).__name__}", file=sys.stderr)
    return exit_code(exc)


def silence_broken_pipe() -> int:
    """stdout was closed early (`apclip-infer ... | head`): not an error worth a message. Later writes
    (and the interpreter's final flush) go to /dev/null instead of raising again."""
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_FAILURE


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (apclip)")
    return parser
