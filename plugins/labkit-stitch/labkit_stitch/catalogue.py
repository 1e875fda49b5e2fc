"""Every similarity measure by name, with its declared properties; choosing one by name.

A :class:`Measure` holds the function (two activation matrices ``(n, p1)``, ``(n, p2)``,
rows the same examples, keyword parameters → float), its default parameters, whether it
is a similarity or a distance, whether it is symmetric and a metric, and what it is
invariant to. An invariance names a map of the features applied to one argument, the
other unchanged:

* ``orthogonal``: ``x ↦ xQ``, Q orthogonal;
* ``isotropic_scaling``: ``x ↦ s·x``, s > 0;
* ``translation``: ``x ↦ x + 1cᵀ`` (the same vector added to every example);
* ``invertible_linear``: ``x ↦ xA``, A invertible;
* ``permutation``: ``x ↦ xP``, P a permutation of the features.

``invariances`` hold on both sides; ``invariances_x`` and ``invariances_y`` add those that
hold on one side only (a one-sided measure, such as the regression R², may be invariant
to more on one side). tests/test_similarity_measures.py checks every declaration both
ways on random data: the value stays where an invariance is declared, and changes under
each transform that is not; metric axioms where ``metric``.

A *choice* is a measure with its parameters, written ``name`` or ``name:key=value,...``
on the command line (``svcca:keep=20``, ``mutual_knn:k=5``); its *column* (the table's
column name) is that text with only the parameters that differ from the defaults.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from labkit_stitch import cka, measures
from labkit_stitch.measures import Activations

ORTHOGONAL, SCALING, TRANSLATION, LINEAR, PERMUTATION = (
    "orthogonal", "isotropic_scaling", "translation", "invertible_linear", "permutation")
TRANSFORMS = (ORTHOGONAL, SCALING, TRANSLATION, LINEAR, PERMUTATION)
# shape-preserving maps: what CKA, Procrustes and Euclidean RSA are invariant to
SHAPE = frozenset({ORTHOGONAL, SCALING, TRANSLATION, PERMUTATION})
ALL = frozenset(TRANSFORMS)

Table = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Measure:
    """A similarity measure and its declared properties (see the module docstring).

    Attributes:
        function: ``function(x, y, **params) -> float``.
        kind: ``"similarity"`` (larger is more similar) or ``"distance"``.
        reference: the publication, and the code whose conventions it follows.
        table: ``table(xs, ys, **params) -> (len(xs), len(ys))`` array computing many pairs
            at once (CKA shares Gram matrices), or ``None`` for a loop over pairs.
    """

    name: str
    function: Callable[..., float]
    kind: str
    symmetric: bool
    metric: bool
    invariances: frozenset[str]
    reference: str
    invariances_x: frozenset[str] = frozenset()
    invariances_y: frozenset[str] = frozenset()
    table: Table | None = None
    defaults: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        signature = inspect.signature(self.function)
        object.__setattr__(self, "defaults", {
            name: p.default for name, p in list(signature.parameters.items())[2:]})

    def invariant(self, side: str) -> frozenset[str]:
        """What the value is invariant to when ``side`` (``"x"`` or ``"y"``) is mapped."""
        return self.invariances | (self.invariances_x if side == "x" else self.invariances_y)


def _cka_table(kernel: str, debiased: bool) -> Table:
    def table(xs: Sequence[ArrayLike], ys: Sequence[ArrayLike], **params: Any) -> np.ndarray:
        return cka.cka_table(xs, ys, kernel, debiased, **params)
    return table


def _r2_y_to_x(x: Activations, y: Activations) -> float:
    """R² of the least-squares linear prediction of ``x`` from ``y``:
    :func:`~labkit_stitch.measures.linear_r2` with the arguments swapped."""
    return measures.linear_r2(y, x)


def _rsa(rdm_kind: str, method: str) -> Callable[[Activations, Activations], float]:
    def rsa(x: Activations, y: Activations) -> float:
        return measures.rsa(x, y, rdm_kind, method)
    rsa.__doc__ = (f"RSA: {rdm_kind} RDMs compared by {method} "
                   f"(:func:`labkit_stitch.measures.rsa`).")
    return rsa


KORNBLITH = "Kornblith et al. 2019 (google-research/google-research representation_similarity)"
SONG = "; unbiased HSIC of Song et al. 2012"
MEASURES: dict[str, Measure] = {m.name: m for m in [
    Measure("linear_cka", cka.linear_cka, "similarity", True, False, SHAPE, KORNBLITH,
            table=_cka_table("linear", False)),
    Measure("rbf_cka", cka.rbf_cka, "similarity", True, False, SHAPE,
            KORNBLITH + "; median-heuristic bandwidth", table=_cka_table("rbf", False)),
    Measure("debiased_linear_cka", cka.debiased_linear_cka, "similarity", True, False, SHAPE,
            KORNBLITH + SONG, table=_cka_table("linear", True)),
    Measure("debiased_rbf_cka", cka.debiased_rbf_cka, "similarity", True, False, SHAPE,
            KORNBLITH + SONG, table=_cka_table("rbf", True)),
    Measure("minibatch_cka", cka.minibatch_cka, "similarity", True, False, SHAPE,
            "Nguyen, Raghu and Kornblith 2021" + SONG, table=cka.minibatch_cka_table),
    Measure("mean_cca", measures.mean_cca, "similarity", True, False, ALL,
            "Raghu et al. 2017; Kornblith et al. 2019 (ρ̄_CCA)"),
    Measure("r2_cca", measures.r2_cca, "similarity", True, False, ALL,
            "Kornblith et al. 2019 (R²_CCA)"),
    Measure("svcca", measures.svcca, "similarity", True, False, SHAPE,
            "Raghu et al. 2017 (google/svcca)"),
    Measure("pwcca", measures.pwcca, "similarity", False, False,
            frozenset({SCALING, TRANSLATION, PERMUTATION}),
            "Morcos et al. 2018, the paper's definition (google/svcca differs)",
            invariances_y=frozenset({ORTHOGONAL, LINEAR})),
    Measure("procrustes_angular", measures.procrustes_angular, "distance", True, True, SHAPE,
            "Williams et al. 2021 (ahwillia/netrep LinearMetric, alpha=1, angular)"),
    Measure("procrustes_distance", measures.procrustes_distance, "distance", True, True, SHAPE,
            "Schönemann 1966; Ding et al. 2021 (its square)"),
    Measure("linear_r2_x_to_y", measures.linear_r2, "similarity", False, False, SHAPE,
            "least squares; scikit-learn r2_score, variance_weighted",
            invariances_x=frozenset({LINEAR})),
    Measure("linear_r2_y_to_x", _r2_y_to_x, "similarity", False, False, SHAPE,
            "least squares; scikit-learn r2_score, variance_weighted",
            invariances_y=frozenset({LINEAR})),
    Measure("mutual_knn", measures.mutual_knn, "similarity", True, False,
            frozenset({ORTHOGONAL, SCALING, PERMUTATION}),
            "Huh et al. 2024 (minyoungg/platonic-rep)"),
    Measure("cknna", measures.cknna, "similarity", False, False,
            frozenset({ORTHOGONAL, SCALING, PERMUTATION}),
            "Huh et al. 2024 (minyoungg/platonic-rep)"),
    *(Measure(f"rsa_{kind}_{method}", _rsa(kind, method), "similarity", True, False,
              SHAPE if kind == "euclidean" else frozenset({SCALING, PERMUTATION}),
              "Kriegeskorte et al. 2008 (rsatoolbox calc_rdm, compare)")
      for kind in measures.RDMS for method in measures.COMPARISONS),
]}
CKA_MEASURES = ("linear_cka", "rbf_cka", "debiased_linear_cka", "debiased_rbf_cka",
                "minibatch_cka")


@dataclass(frozen=True)
class Choice:
    """A measure with its parameters (the defaults overridden by ``params``)."""

    measure: Measure
    params: dict[str, Any]

    @property
    def column(self) -> str:
        """``name``, or ``name:key=value,...`` with the parameters that differ from the
        defaults."""
        changed = [f"{k}={v}" for k, v in self.params.items() if v != self.measure.defaults[k]]
        return self.measure.name + (":" + ",".join(changed) if changed else "")

    def __call__(self, x: Activations, y: Activations) -> float:
        return self.measure.function(x, y, **self.params)

    def prepare(self, xs: Sequence[Activations]) -> list[Activations]:
        """``xs`` ready to be compared many times: each a
        :class:`~labkit_stitch.measures.Representation` (what the measure derives from a
        layer is derived once, and follows a permutation of the rows), or a float64
        matrix for a measure with its own ``table`` (CKA: Gram matrices)."""
        if self.measure.table is not None:
            return [measures.as_matrix(x) for x in xs]
        return [measures.representation(x) for x in xs]

    def table(self, xs: Sequence[Activations], ys: Sequence[Activations]) -> np.ndarray:
        """``(len(xs), len(ys))`` values of every pair."""
        xs, ys = self.prepare(xs), self.prepare(ys)
        if self.measure.table is not None:
            return self.measure.table(xs, ys, **self.params)
        return np.array([[self(x, y) for y in ys] for x in xs], dtype=np.float64)


def _value(name: str, key: str, text: str, default: Any) -> Any:
    """Parameter ``key`` of measure ``name`` from ``text``, of its default's type (an int
    where a float is expected is kept: ``svcca``'s ``keep`` is a count as an int)."""
    kinds = {bool: (bool,), int: (int,), float: (int, float)}[type(default)]
    if bool in kinds:
        value: Any = {"true": True, "false": False}.get(text.lower())
    else:
        value = next((kind(text) for kind in kinds if _parses(kind, text)), None)
    if value is None:
        expected = " or ".join(kind.__name__ for kind in kinds)
        raise ValueError(f"measure {name}: {key}={text!r} is not {expected}")
    return value


def _parses(kind: type, text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def choose(text: str) -> Choice:
    """The :class:`Choice` written ``name`` or ``name:key=value,...``.

    Raises:
        ValueError: an unknown measure or parameter, or a malformed text (one line that
            names the fix).
    """
    name, _, rest = text.strip().partition(":")
    if name not in MEASURES:
        close = difflib.get_close_matches(name, MEASURES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown measure {name!r}; {hint}measures: {', '.join(MEASURES)}")
    measure = MEASURES[name]
    params = dict(measure.defaults)
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, value = item.partition("=")
        if not equals or key.strip() not in params:
            allowed = ", ".join(params) or "none"
            raise ValueError(f"measure {name}: {item!r} is not key=value with a parameter of "
                             f"{name} (parameters: {allowed})")
        params[key.strip()] = _value(name, key.strip(), value.strip(),
                                     params[key.strip()])
    return Choice(measure, params)
