"""The one entry wrapper every apclip console script goes through (`run_command`).

The contract, the same for all eleven commands (docs/cli.md):
- `--help`, `--version` (`PROG 0.1.0 (apclip)`) and `--debug` (tracebacks) on every command;
- exit 0 ok; 1 a failure, said in one line `PROG: error: ...`; 2 a usage error (argparse's own, or a
  `UsageError`: `PROG: error: ...`) or a missing optional package (the line names the extra and the
  install command, `apclip.extras.install_hint`); 130 interrupted (Ctrl-C);
- no traceback without --debug: an unexpected exception is one `PROG: error: internal error: ...` line.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

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


def one_line(exc: BaseException) -> str:
    """What a user reads for `exc`: its message on one line, the file an OS error is about, the extra a
    bare ImportError of an optional package needs, or `internal error: ...` for a bug."""
    if isinstance(exc, ImportError) and not isinstance(exc, ApclipError):
        from apclip.extras import missing_module_message

        known = missing_module_message(exc)
        if known:
            return known
    if isinstance(exc, OSError) and not isinstance(exc, ApclipError) and exc.filename:
        # os.replace(tmp, target) names the target second: the user knows the target, not the tmp file
        return f"{exc.filename2 or exc.filename}: {exc.strerror or exc}"
    text = " ".join(str(exc).split())
    if isinstance(exc, (ApclipError, OSError, ImportError)):
        return text or type(exc).__name__
    return f"internal error: {type(exc).__name__}: {text} (run with --debug for the traceback)"


def report_error(prog: str, exc: BaseException) -> int:
    """Print `exc` as one line on stderr under the command's name; returns its exit status."""
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
    else:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    return exit_code(exc)


def silence_broken_pipe() -> int:
    """stdout was closed early (`apclip-infer ... | head`): not an error worth a message. Later writes
    (and the interpreter's final flush) go to /dev/null instead of raising again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_FAILURE


def progress_wanted(flag: bool | None) -> bool:
    """--progress / --no-progress as given; by default bars only on a terminal (never drawn into a log file)."""
    return sys.stderr.isatty() if flag is None else flag


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    if "--version" not in parser._option_string_actions:
        parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (apclip)")
    return parser


def add_common_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--version and --debug on the command, and --debug on each subcommand too (`apclip-bench parity
    ... --debug` is where users type it)."""
    add_version(parser)
    if "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true", help="show tracebacks")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "--debug" not in sub._option_string_actions:
                    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                     help="show tracebacks")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None, intermixed: bool) -> argparse.Namespace:
    return parser.parse_intermixed_args(argv) if intermixed else parser.parse_args(argv)


def run_command(prog: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int],
                argv: Sequence[str] | None = None, *, intermixed: bool = False,
                cleanup: Callable[[], None] | None = None, interrupted: str = "") -> int:
    """Parse `argv` and run `body(args)` under the contract above; returns the exit status.

    cleanup: called on any error or interrupt before the message (discard half-written outputs).
    interrupted: said after `PROG: interrupted` (e.g. "; no bundle was written").
    """
    add_common_options(parser)
    args_given = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_given
    try:
        args = _parse(parser, argv, intermixed)
        debug = bool(getattr(args, "debug", debug))
        return body(args)
    except SystemExit:
        raise  # argparse: --help / --version (0) and its own usage errors (2), already printed
    except BrokenPipeError:
        if cleanup is not None:
            cleanup()
        return silence_broken_pipe()
    except KeyboardInterrupt:
        if cleanup is not None:
            cleanup()
        print(f"{prog}: interrupted{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if cleanup is not None:
            cleanup()
        if debug:
            raise
        return report_error(prog, exc)
