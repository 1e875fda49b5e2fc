"""Reading the files labkit wrote — or that someone else put in their place — safely.

Every reader of a run file, a cache entry, a CSV table, a digest or an array goes
through this module. Whatever bytes a file holds (empty, truncated, garbage, not UTF-8,
JSON nested a million levels deep, values of the wrong type, a lone surrogate, NaN, an
array of Python objects), a reader returns the value asked for or raises one
:class:`~labkit.core.errors.DamagedFile` whose message names the file, says in plain words
what is wrong with it and what to do. Nothing here runs code from a file (no pickles,
``weights_only`` checkpoints elsewhere), and no message relays a library's advice to load
a file unsafely: labkit's messages are its own.

What a reader guarantees is integrity against damage, not authenticity: a file edited
on purpose so that it stays well-formed (and whose digest was edited to match) reads as
intact. Digests (:func:`labkit.store.atomic.file_sha256`) catch damage and accidental edits of
files that are recorded elsewhere.
"""
from __future__ import annotations

import functools
import io
import json
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import TypeAdapter, ValidationError

from labkit.core.errors import DamagedFile

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MAX_DEPTH = 64
"""Deepest nesting of lists and objects a JSON file of labkit may hold (its deepest,
a resolved config, holds about ten): deeper means damaged, and would overflow Python's
recursion later."""
_FIX = "delete it to let labkit rebuild it, or restore it"
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def readable_size(size: float) -> str:
    """``size`` bytes for people: ``512 B``, ``1.5 KiB``, ``3.2 MiB``, ``1.1 GiB``
    (powers of 1024), never ``0.00 GB``."""
    size = float(size)
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def damaged(path: Path, what: str, fix: str = _FIX) -> DamagedFile:
    """The one error of every reader: ``<path> <what>; <fix>``."""
    return DamagedFile(f"{path} {what}; {fix}")


def read_bytes(path: str | Path, fix: str = _FIX) -> bytes | None:
    """The bytes of ``path``; ``None`` when it does not exist.

    Raises:
        DamagedFile: it exists but cannot be read (a folder, no permission, I/O error).
    """
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise damaged(path, f"cannot be read ({exc.strerror or type(exc).__name__})", fix) \
            from None


def read_text_file(path: str | Path, fix: str = _FIX) -> str | None:
    """The text of ``path`` (UTF-8, with no lone surrogate); ``None`` when it does not
    exist.

    Raises:
        DamagedFile: unreadable, or not UTF-8 text.
    """
    data = read_bytes(path, fix)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise damaged(Path(path), f"is not UTF-8 text (byte {exc.start} is 0x"
                                  f"{data[exc.start]:02x})", fix) from None


def _check_plain(path: Path, value: Any, fix: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and strings (keys included) holding
    a lone surrogate (``"\\ud800"``: valid JSON, but no text any file or terminal can
    take). Iterative: the value may be as deep as the decoder allowed."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise damaged(path, "holds a lone surrogate escape (\\ud800–\\udfff), not "
                                    "text", fix) from None
        elif isinstance(item, (list, dict)):
            if depth >= MAX_DEPTH:
                raise damaged(path, f"is nested deeper than {MAX_DEPTH} levels", fix)
            if isinstance(item, dict):
                stack.extend((key, depth + 1) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)


def parse_json(path: Path, text: str, fix: str = _FIX) -> Any:
    """``text`` (the content of ``path``) as JSON, checked by :func:`_check_plain`.

    Raises:
        DamagedFile: not JSON, nested too deep, a lone surrogate.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise damaged(path, f"is nested deeper than {MAX_DEPTH} levels", fix) from None
    except ValueError as exc:  # JSONDecodeError, and Python's limit on long integers
        reason = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) \
            else "holds a number too long to read"
        raise damaged(path, f"is not valid JSON ({reason})", fix) from None
    _check_plain(path, value, fix)
    return value


@functools.lru_cache(maxsize=None)
def _adapter(shape: Any) -> TypeAdapter:
    return TypeAdapter(shape)


def _printable(text: str, width: int = 60) -> str:
    """``text`` on one line: control characters escaped, cut to ``width``."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= width else text[:width - 1] + "…"


def _validated(path: Path, value: Any, shape: Any, fix: str) -> Any:
    """``value`` validated strictly (a boolean is no integer, a string no number) as
    ``shape``, a type for pydantic's :class:`~pydantic.TypeAdapter`."""
    try:
        return _adapter(shape).validate_python(value, strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = _printable(".".join(map(str, error["loc"]))) or "its top level"
        raise damaged(path, f"holds no valid content ({where}: {error['msg']})", fix) from None


def read_json_file(path: str | Path, shape: Any = dict[str, Any], fix: str = _FIX) -> Any:
    """The JSON value in ``path``, validated as ``shape``; ``None`` when the file does
    not exist.

    Args:
        shape: what the file must hold, as a type pydantic validates strictly
            (``dict[str, Any]``, a ``TypedDict``, a model; extra keys of a model are
            kept or refused as the model says).
        fix: what the message tells the user to do.

    Raises:
        DamagedFile: unreadable, not UTF-8, not JSON, too deep, a lone surrogate, or not
            of ``shape``.
    """
    path = Path(path)
    text = read_text_file(path, fix)
    if text is None:
        return None
    return _validated(path, parse_json(path, text, fix), shape, fix)


def read_json(path: str | Path, shape: Any = dict[str, Any], fix: str = _FIX) -> Any:
    """A JSON object file as :func:`read_json_file` reads it (``shape``: a ``dict[…]``
    type); ``{}`` when it does not exist."""
    value = read_json_file(path, shape, fix)
    return {} if value is None else value


def read_json_lines(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of an append-only ``.jsonl`` file, in order; lines that are not
    an object (a torn last line, damage) are skipped, as an append may be cut short.

    Raises:
        DamagedFile: the file cannot be read or is not UTF-8.
    """
    path = Path(path)
    lines = []
    for line in (read_text_file(path) or "").splitlines():
        try:
            value = parse_json(path, line)
        except DamagedFile:
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines


# column kinds of read_csv_file
TEXT, NUMBER, FINITE, INTEGER, FLAG = "text", "number", "finite", "integer", "flag"


def _column_problem(column: pd.Series, kind: str) -> str | None:
    """What is wrong with ``column`` as a column of ``kind``; ``None`` when nothing.

    ``number``: numeric, NaN allowed (a value a pass did not measure); ``finite``:
    numeric, every value finite; ``integer``: whole numbers; ``flag``: True/False;
    ``text``: anything (it is read as text).
    """
    import numpy as np
    import pandas as pd

    if kind == TEXT:
        return None
    if kind == FLAG:
        return None if pd.api.types.is_bool_dtype(column) else "holds values other than " \
                                                                 "True/False"
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return "holds values that are not numbers"
    values = column.to_numpy(dtype=float)
    if kind in (FINITE, INTEGER) and not np.isfinite(values).all():
        return "holds NaN or infinite values"
    if kind == INTEGER and not (values == np.round(values)).all():
        return "holds values that are not whole numbers"
    return None


def read_csv_file(path: str | Path, columns: Mapping[str, str] | None = None,
                  fix: str = _FIX, text_columns: tuple[str, ...] = (),
                  others: str | None = None) -> pd.DataFrame:
    """The table in the CSV file ``path`` (pandas reads floats back exactly as written).

    Args:
        columns: ``{name: kind}`` of the columns the table must have (kinds:
            :data:`TEXT`, :data:`NUMBER`, :data:`FINITE`, :data:`INTEGER`,
            :data:`FLAG`; see :func:`_column_problem`). A text column is read as text.
        text_columns: further columns read as text when present.
        others: the kind every column not in ``columns`` must be of (``None``: any).

    Raises:
        DamagedFile: missing, unreadable, not UTF-8, empty, not a table, a required
            column missing or holding values of another kind.
    """
    import pandas as pd  # here: commands that read no table (status) start without it

    path = Path(path)
    text = read_text_file(path, fix)
    if text is None:
        raise damaged(path, "does not exist", fix)
    if not text.strip():
        raise damaged(path, "is empty", fix)
    columns = dict(columns or {})
    as_text = {name: str for name, kind in columns.items() if kind == TEXT}
    as_text.update({name: str for name in text_columns})
    try:
        table = pd.read_csv(io.StringIO(text), dtype=as_text or None)
    except (ValueError, TypeError, OverflowError) as exc:  # pandas' ParserError is one
        raise damaged(path, f"is not a readable CSV table ({type(exc).__name__})", fix) \
            from None
    missing = [name for name in columns if name not in table.columns]
    if missing:
        raise damaged(path, f"lacks the column(s) {', '.join(missing)}", fix)
    kinds = {**({name: others for name in table.columns} if others else {}), **columns}
    for name, kind in kinds.items():
        problem = _column_problem(table[name], kind)
        if problem is not None:
            raise damaged(path, f"column {_printable(str(name))} {problem}", fix)
    return table


def _array_header(path: Path, handle: Any, fix: str) -> np.dtype:
    """The dtype in the header of the ``.npy`` file open in ``handle``."""
    import numpy as np

    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}  # what numpy writes for labkit
    try:
        _, _, dtype = readers[np.lib.format.read_magic(handle)](handle)
    except (KeyError, ValueError, OSError, EOFError, SyntaxError, TypeError):
        raise damaged(path, "is not a NumPy .npy file (no valid header)", fix) from None
    return dtype


def npy_dtype(path: str | Path, fix: str = _FIX) -> np.dtype:
    """The dtype in the header of the ``.npy`` file ``path`` (the array is not read).

    Raises:
        DamagedFile: missing, unreadable, or no ``.npy`` header.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return _array_header(path, handle, fix)
    except OSError as exc:
        raise damaged(path, f"cannot be read ({exc.strerror or type(exc).__name__})", fix) \
            from None


def read_npy_file(path: str | Path, kinds: str = "biuf", mmap: bool = False,
                  fix: str = _FIX) -> np.ndarray:
    """The array in the ``.npy`` file ``path``, memory-mapped read-only with ``mmap``.

    Args:
        kinds: the dtype kinds accepted (numpy's ``dtype.kind`` letters; default
            booleans, integers and floats). An array of Python objects is refused
            before anything is loaded.

    Raises:
        DamagedFile: missing, unreadable, truncated, not an array, or of another kind.
    """
    import numpy as np

    path = Path(path)
    dtype = npy_dtype(path, fix)
    if dtype.hasobject or dtype.kind not in kinds:
        raise damaged(path, f"holds {'Python objects' if dtype.hasobject else dtype}, not "
                            f"the numbers labkit stores", fix)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise damaged(path, "is not a complete NumPy array (truncated or damaged)", fix) \
            from None


def read_npz_file(path: str | Path, kinds: str = "biuf",
                  fix: str = _FIX) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive ``path``, by name, loaded.

    Raises:
        DamagedFile: missing, unreadable, not an archive, a member truncated, or a
            member not of ``kinds`` (Python objects are never loaded).
    """
    import numpy as np

    path = Path(path)
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for name in archive.files:
                with archive.zip.open(f"{name}.npy") as member:
                    dtype = _array_header(path, member, fix)
                if dtype.hasobject or dtype.kind not in kinds:
                    raise damaged(path, f"holds {'Python objects' if dtype.hasobject else dtype}"
                                        f" in {_printable(name)}, not the numbers labkit "
                                        f"stores", fix)
                arrays[name] = archive[name]
    except DamagedFile:
        raise
    except FileNotFoundError:
        raise damaged(path, "does not exist", fix) from None
    # a zip archive's members can fail in any of these ways when its bytes are damaged
    except (OSError, ValueError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile,
            NotImplementedError, zlib.error):
        raise damaged(path, "is not a complete NumPy archive (truncated or damaged)", fix) \
            from None
    return arrays
