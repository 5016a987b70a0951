"""``decrappify``'s entry point: parse the command line, run the command, and turn an error
into one line and an exit code (SIGTERM unwinds like Ctrl-C)."""

from __future__ import annotations

import signal
import sys
import threading
import time

from .errors import _option_strings, error_message
from .parser import build_parser


def _terminated(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run ``decrappify`` with ``argv`` (default: the process's); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if getattr(args, "feature_loss", None):
        args.loss = "perceptual"
    t0 = time.monotonic()
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        # SIGTERM (a batch system's stop) unwinds like Ctrl-C: a TIFF's .part file is removed
        # and a Zarr store stays marked unfinished (rerun to resume), instead of dying mid-write
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:
        print(f"decrappify {args.command}: error: "
              f"{error_message(e, _option_strings(parser, args.command))}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if code == 0 and args.command not in ("models",):
        print(f"[{args.command}] done in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return code
