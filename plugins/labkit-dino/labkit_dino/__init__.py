"""labkit-dino: self-distillation from random and EMA teachers, with probing.

Registers the training method ``dino`` (:class:`labkit_dino.method.Dino`) through the
entry point ``dino`` in the group ``labkit``; ``plugin_module`` is the module that
implements the hooks, for registering the plugin in-process
(``labkit.api.use(labkit_dino.plugin_module)``).
"""
from labkit_dino import plugin as plugin_module

__version__ = "0.1.0"

__all__ = ["plugin_module", "__version__"]
