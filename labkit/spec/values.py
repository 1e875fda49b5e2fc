"""Checks of parameter values that components share: a label that starts file names, a
memory size. Torch-free and loaded with :mod:`labkit.spec`, so that a parameter model
using them as ``Annotated`` validators is rebuilt with them where the command line
resolves specs from its cache (:mod:`labkit.core.params_schema`)."""
from __future__ import annotations

import re

from labkit.core.errors import UserError
from labkit.store.identity import folder_name_problem

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes of a size such as ``8G``, ``500M``, ``1.5G`` or ``1000000`` (units K, M, G,
    T of 1024; a trailing ``B`` or ``iB`` allowed).

    Raises:
        UserError: not such a size.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if match is None or float(match[1]) <= 0:
        raise UserError(f"memory size {text!r}: give a positive size such as 8G, 500M or "
                        f"1.5G")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def memory_size(value: str | None) -> str | None:
    """A validator: ``value`` unchanged when ``None`` or a size :func:`parse_size` reads.

    Raises:
        ValueError: another text, saying what to give.
    """
    if value is not None:
        try:
            parse_size(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None
    return value


def file_prefix(value: str | None) -> str | None:
    """A validator: ``value`` unchanged when ``None`` or a label usable at the start of a
    file name in a run directory.

    Raises:
        ValueError: a label that is not (a path separator, too long, …).
    """
    problem = None if value is None else folder_name_problem(value)
    if problem:
        raise ValueError(f"the prefix starts the names of files in the run directory, but "
                         f"{problem}; give a short label")
    return value
