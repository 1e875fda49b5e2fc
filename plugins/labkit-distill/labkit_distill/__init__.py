"""labkit-distill: teacher-student distillation and counterfactual cue datasets.

Registers the method ``distill`` (:mod:`labkit_distill.method`) and the datasets
``box_cue``, ``dominoes``, ``colour_cue`` (:mod:`labkit_distill.cues`), ``shapes``
(:mod:`labkit_distill.shapes`) and ``train_on_eval`` (:mod:`labkit_distill.sources`).
Checks distillation runs before they train (:mod:`labkit_distill.checks`) and adds the
students' agreement with their teachers to ``labkit report``
(:mod:`labkit_distill.report`). Loaded by labkit through the entry point ``distill`` in
the group ``labkit``.
"""
from labkit.api import hookimpl
from labkit_distill.checks import distill_problems
from labkit_distill.cues import box_cue, colour_cue, dominoes
from labkit_distill.method import Distill
from labkit_distill.report import report_sections
from labkit_distill.shapes import shapes
from labkit_distill.sources import source_params, train_on_eval

__version__ = "0.1.0"

# datasets whose parameters name other datasets: those are validated with the spec
_WRAPPERS = {"box_cue": (box_cue, ("base",)), "dominoes": (dominoes, ("base", "second")),
             "colour_cue": (colour_cue, ("base",)),
             "train_on_eval": (train_on_eval, ("base",))}


@hookimpl
def labkit_register(registries) -> None:
    """Register the ``distill`` method and the cue datasets."""
    registries.methods.register("distill", Distill)
    registries.datasets.register("shapes", shapes)
    for name, (factory, sources) in _WRAPPERS.items():
        registries.datasets.register(name, factory, params=source_params(name, factory, sources))


@hookimpl
def labkit_check_run(config, registries) -> list[str]:
    """The mistakes of a ``distill`` run found before it trains (:mod:`labkit_distill.checks`)."""
    return distill_problems(config, registries)


@hookimpl
def labkit_report_sections(runs) -> list[tuple[str, str]]:
    """The agreement of each student with its teacher (:mod:`labkit_distill.report`)."""
    return report_sections(runs)
