"""Reading a spec file: JSON with duplicate keys refused, no deeper than
:data:`MAX_DEPTH`, no lone surrogates."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labkit.core.errors import UserError
from labkit.spec.messages import join_path
from labkit.store.identity import note_outside

# a spec is a few levels of objects and lists; far deeper is a mistake (or an attack)
MAX_DEPTH = 32


def check_raw(raw: Any) -> None:
    """Refuse what no spec holds, before anything reads it (iteratively: no recursion):
    nesting deeper than :data:`MAX_DEPTH`, and text that is no Unicode text (a lone
    surrogate such as ``"\\ud800"``, which JSON can escape but no file name, no UTF-8
    file and no cache key can hold).

    Raises:
        UserError: naming the JSON path.
    """
    stack = [(raw, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UserError(f"{path}: the spec is nested more than {MAX_DEPTH} levels deep "
                            f"here; a spec is a few levels of objects and lists")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path or "spec")
                stack.append((item, join_path(path, key), depth + 1))
        elif isinstance(value, list):
            stack += [(v, join_path(path, i), depth + 1) for i, v in enumerate(value)]
        else:
            _check_text(value, path or "spec")


def _check_text(value: Any, path: str) -> None:
    if not isinstance(value, str):
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        raise UserError(f"{path.encode('utf-8', 'backslashreplace').decode()}: the text "
                        f"holds {bad!r}, half of a UTF-16 surrogate pair, which is no "
                        f"character; write the character itself (or its pair of escapes)") from None


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON spec file.

    Raises:
        UserError: missing file, or invalid JSON with line and column.
    """
    p = Path(path)
    note_outside(f"spec file {p}")
    if not p.is_file():
        raise UserError(f"spec file {str(p)!r} not found; check the path "
                        f"(example specs are in specs/)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not UTF-8 text (byte {exc.start}); save the spec as UTF-8 "
                        f"JSON") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys(p))
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg}; fix the syntax (JSON needs double quotes and no "
                        f"trailing commas)") from None
    except RecursionError:
        raise UserError(f"{p}: the JSON is nested too deeply to be a spec; a spec is a few "
                        f"levels of objects and lists") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise UserError(f"{p}: {exc}; give numbers of ordinary size") from None


def _unique_keys(path: Path) -> Any:
    """``object_pairs_hook`` refusing a key given twice in one object (JSON readers
    silently keep the last one, so the first value would be lost without a word)."""
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        doubled = sorted({key for key in keys if keys.count(key) > 1})
        if doubled:
            raise UserError(f"{path}: the key(s) {', '.join(map(repr, doubled))} appear twice "
                            f"in one object; keep one")
        return dict(pairs)
    return build


