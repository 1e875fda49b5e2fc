"""labkit's entry point into labkit-dino: registers the ``dino`` method and the
random-teacher paper's encoders (:mod:`labkit_dino.encoders`), checks dino runs
before they train (:mod:`labkit_dino.checks`) and adds their probe accuracies to
``labkit report`` (:mod:`labkit_dino.report`)."""
from labkit.api import hookimpl
from labkit_dino.checks import dino_problems
from labkit_dino.encoders import ENCODERS
from labkit_dino.method import Dino
from labkit_dino.report import report_sections


@hookimpl
def labkit_register(registries) -> None:
    """Add the method ``dino`` and the models ``convnet_<w>_<k>``, ``vit_tiny``, ``vit_small``."""
    registries.methods.register("dino", Dino)
    for name, factory in ENCODERS.items():
        registries.models.register(name, factory)


@hookimpl
def labkit_check_run(config, registries) -> list[str]:
    """The mistakes of a ``dino`` run found before it trains (:mod:`labkit_dino.checks`)."""
    return dino_problems(config, registries)


@hookimpl
def labkit_report_sections(runs) -> list[tuple[str, str]]:
    """The final probe accuracies of the dino runs (:mod:`labkit_dino.report`)."""
    return report_sections(runs)
