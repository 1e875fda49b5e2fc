"""labkit's entry point into labkit-dino: registers the ``dino`` method."""
import labkit
from labkit_dino.method import Dino


@labkit.hookimpl
def labkit_register(registries) -> None:
    """Add the method ``dino``."""
    registries.methods.register("dino", Dino)
