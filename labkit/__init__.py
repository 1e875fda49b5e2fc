"""labkit: a declarative lab for studying what image networks learn, layer by layer.

Public surface for plugin authors: :data:`hookimpl` marks hook implementations;
hook specifications live in :mod:`labkit.core.hookspecs`.
"""
import pluggy

__version__ = "0.3.0"

hookimpl = pluggy.HookimplMarker("labkit")

__all__ = ["hookimpl", "__version__"]
