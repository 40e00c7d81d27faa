"""Argument types shared by the cell magic and its subcommands: each refuses bad input with a
message in the flag's words (argparse prints it as ``argument --flag: ...``)."""

from __future__ import annotations

import argparse
import builtins
import keyword
import re

#: Names IPython keeps in the user's namespace (output history, input history, directories,
#: the shell itself) and dunders; a result stored there would break every later cell.
_SHELL_NAMES = frozenset({"get_ipython", "exit", "quit", "In", "Out"})
_SHELL_NAME = re.compile(r"_+|_\d+|_i.*|_o.*|_dh.*|__.*__")


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def variable_name(text: str) -> str:
    """A variable of the user's own: replacing one the shell or Python needs breaks the shell."""
    if (
        not text.isidentifier()
        or keyword.iskeyword(text)
        or text in _SHELL_NAMES
        or _SHELL_NAME.fullmatch(text)
        or hasattr(builtins, text)
    ):
        raise argparse.ArgumentTypeError(
            "must be a Python variable name of your own, not a keyword, a builtin (print...) "
            f"or one of IPython's (get_ipython, exit, quit, In, Out, _, _i..., _o..., _dh), "
            f"got {text!r}"
        )
    return text
