"""labkit's entry point into labkit-dino: registers the ``dino`` method."""
from labkit.api import hookimpl
from labkit_dino.method import Dino


@hookimpl
def labkit_register(registries) -> None:
    """Add the method ``dino``."""
    registries.methods.register("dino", Dino)
