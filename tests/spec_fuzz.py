"""Seeded generator of mutated spec files for the fuzz test (tests/test_hostile.py).

Each mutation is what a person or a script might plausibly write: a wrong type, a value
out of range, a typo'd key, a list where one value is expected (a grid axis), an empty
or huge list, deep nesting, a duplicated key, text that is not JSON or not UTF-8.
"""
from __future__ import annotations

import json
import random
from typing import Any

BASES: list[dict[str, Any]] = [
    {"model": "cnn_xs", "dataset": {"name": "digits", "resolution": 8}, "epochs": 1,
     "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}},
    {"model": {"name": "mlp_s", "hidden": 16}, "dataset": "digits", "epochs": 2,
     "optimizer": {"name": "adam", "lr": 0.001}, "scheduler": {"name": "cosine"},
     "saturation": {"delta": 0.99}, "analyses": ["receptive_field"]},
    {"model": "resnet18_xxs", "dataset": {"name": "digits", "augment": "flip_crop"},
     "epochs": 1, "metrics": ["accuracy"], "seed": [0, 1],
     "analyses": [{"name": "probes", "downsampling": 2}]},
]

ODD_VALUES: list[Any] = [
    None, True, -1, 0, -8, 1, 10**11, 10**30, 1e308, -1e-9, 0.5, "", "x", "flipcrop",
    "tv:not_a_model", "../../x", "a" * 300, [], [[]], {}, {"name": []}, {"name": None},
    [1, "two", None], {"name": "sgd", "lr": -1}, "NaN", [0.1] * 40,
    -0.0, 2.0, 2 ** 64, "\ud800", "a\\b", "..", [[]],
]

RAW_TEXT: list[str | bytes] = [
    "", "{", "[]", "null", "42", '"spec"', "{'model': 'cnn_xs'}", '{"model": "cnn_xs",}',
    '{"model": "cnn_xs", "epochs": NaN}', '{"model": "cnn_xs", "epochs": Infinity}',
    '{"model": "cnn_xs", "seed": 1, "seed": 2}', "[" * 5000 + "]" * 5000,
    '{"model": "cnn_xs", "epochs": ' + "9" * 5000 + "}",
    b'{"model": "cnn_\xff\xfe"}', '{"model": "cnn_xs", "logs_dir": "a\\u0000b"}',
]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside nested dicts and lists."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, prefix + (i,))
    return out


def _set(root: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    node = root
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return root


def _mutate(spec: dict[str, Any], rng: random.Random) -> dict[str, Any] | list | str:
    spec = json.loads(json.dumps(spec))
    path = rng.choice(_paths(spec)[1:])
    kind = rng.randrange(6)
    if kind == 0:  # a wrong or out-of-range value
        return _set(spec, path, json.loads(json.dumps(rng.choice(ODD_VALUES))))
    if kind == 1:  # a typo'd key next to the value
        parent = spec
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict):
            key = str(path[-1])
            parent[key[:-1] + key[-1].upper() + "x"] = parent.pop(key)
        return spec
    if kind == 2:  # a grid axis where one value was meant, maybe empty
        node = spec
        for step in path:
            node = node[step]
        return _set(spec, path, [] if rng.random() < 0.2 else [node, rng.choice(ODD_VALUES)])
    if kind == 3:  # a required key removed
        parent = spec
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict):
            parent.pop(path[-1])
        return spec
    if kind == 4:  # deep nesting at a random place
        deep: Any = 1
        for _ in range(rng.choice([50, 500, 3000])):
            deep = [deep] if rng.random() < 0.5 else {"a": deep}
        return _set(spec, path, deep)
    return _set(spec, path, {"name": rng.choice(["sgd", "cosine", "digits", "nope", 3])})


def type_swaps(bases: list[dict[str, Any]], rng: random.Random) -> list[tuple[Any, str]]:
    """Each boolean and number of ``bases`` replaced, one at a time, by a value of
    another JSON type that a careless hand or script writes (``true`` or ``2.0`` for an
    integer, ``true`` for a float, ``1`` or ``0.0`` for a boolean; drawn from ``rng``):
    ``(spec, dotted path)`` pairs, every one of which a strict spec refuses."""
    swaps = []
    for base in bases:
        for path in _paths(base)[1:]:
            node = base
            for step in path:
                node = node[step]
            if isinstance(node, bool):
                other = rng.choice([1, 0, 0.0, 1.0])
            elif isinstance(node, int):
                other = rng.choice([True, False, float(node), -0.0 if node == 0 else node + 0.0])
            elif isinstance(node, float):
                other = rng.choice([True, False])
            else:
                continue
            spec = _set(json.loads(json.dumps(base)), path, other)
            swaps.append((spec, ".".join(map(str, path))))
    return swaps


def corpus(count: int, seed: int = 0) -> list[bytes]:
    """``count`` spec files' contents: raw oddities first, then mutated specs."""
    rng = random.Random(seed)
    files = [t if isinstance(t, bytes) else t.encode() for t in RAW_TEXT]
    while len(files) < count:
        try:
            spec = _mutate(rng.choice(BASES), rng)
            for _ in range(rng.randrange(3)):  # sometimes several mutations at once
                if isinstance(spec, dict):
                    spec = _mutate(spec, rng)
            files.append(json.dumps(spec).encode())
        except RecursionError:  # nested too deep for Python's json itself: as text
            files.append(("[" * 3000 + "]" * 3000).encode())
    return files
