"""Exit codes and one-line error messages of the command line."""

from __future__ import annotations

import argparse
import sys

EXIT_NOT_BUILT = 2


def _not_built(name: str):
    def run(args) -> int:
        print(f"decrappify {name}: not built yet in this version", file=sys.stderr)
        return EXIT_NOT_BUILT

    return run


# config fields whose command line option has another name
_FIELD_OPTIONS = {"blur_sigma": "blur", "batch_size": "batch", "patch_size": "patch",
                  "iterations_per_epoch": "iters", "feature_weights": "feature_loss"}


def error_message(e: BaseException, options: dict[str, str] | None = None) -> str:
    """One line for an error: a pydantic ValidationError as ``--option: message`` per field
    (no URL), an OSError as ``path: reason``, anything else as its text. ``options`` maps
    argparse ``dest`` names to option strings (:func:`_option_strings`)."""
    errors = getattr(e, "errors", None)
    if callable(errors) and type(e).__name__ == "ValidationError":
        options = options or {}
        parts = []
        for err in errors():
            loc = [str(x) for x in err.get("loc", ())]
            field = loc[-1] if loc else getattr(e, "title", "value")
            option = options.get(_FIELD_OPTIONS.get(field, field)) or ".".join(loc) or field
            msg = str(err.get("msg", "invalid value"))
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            elif "input" in err:
                msg = f"{msg} (got {err['input']!r})"
            parts.append(f"{option}: {msg}")
        return "; ".join(parts)
    if isinstance(e, OSError) and e.strerror:
        where = "" if e.filename is None else str(e.filename)
        if e.filename2 is not None:
            where = f"{where} -> {e.filename2}"
        return f"{where}: {e.strerror}" if where else e.strerror
    text = str(e) or type(e).__name__
    return " ".join(text.split())  # one line


def _option_strings(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """dest -> long option string, for the options of subcommand ``command``."""
    out: dict[str, str] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse keeps them here
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:  # noqa: SLF001
            for a in action.choices[command]._actions:  # noqa: SLF001
                if a.option_strings:
                    out.setdefault(a.dest, max(a.option_strings, key=len))
    return out
