"""``--help`` of the ``data-advisor`` commands: every option with its default, an example each.

:class:`HelpFormatter` appends ``(default: X)`` to an option's help text unless the text
already says its default or there is none to show (``None``, ``False``), and keeps
descriptions and epilogs as written (examples stay on their own lines).
:func:`add_command` registers a sub-command that uses it, with its examples as the epilog::

    run = add_command(sub, "run", "generate data", examples=["data-advisor run --rounds 3"])

:func:`positive_int` is the argparse type of a count that must be at least 1.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TypeAlias

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers`` returns: each package's ``add_commands`` registers its commands on it."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown where they say something; description and epilog kept verbatim."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or "%(default)" in text:
            return text
        if action.default in (None, False, argparse.SUPPRESS) or action.default == []:
            return text  # "no default": the help text says what happens without the option
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text  # a required positional has no default
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``--rounds 0`` is refused, not read as "unset")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (a number of retries)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def examples_epilog(examples: Sequence[str]) -> str | None:
    """The epilog listing ``examples`` one per line (``None`` without examples)."""
    if not examples:
        return None
    lines = "\n".join(f"  {line}" for line in examples)
    return f"example{'s' if len(examples) > 1 else ''}:\n{lines}"


def add_command(
    sub: Subcommands,
    name: str,
    help: str,  # noqa: A002 - argparse's own name for it
    *,
    description: str | None = None,
    examples: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """Add sub-command ``name`` with :class:`HelpFormatter` and ``examples`` as its epilog."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        epilog=examples_epilog(examples),
        formatter_class=HelpFormatter,
    )
