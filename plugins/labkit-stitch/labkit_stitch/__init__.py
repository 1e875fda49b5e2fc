"""labkit-stitch: model stitching tables and representational similarity for labkit.

Registers the model ``stitched`` (A's bottom up to layer i, a trainable stitch, B's top
from layer j; A and B are labkit runs), the method ``autoencoder_stitch`` (fit the
stitch to B's own activations), and the commands ``labkit stitch-table`` (i × j tables
of stitched accuracy, random-sender baseline, debiased difference, CKA and companion
similarity columns), ``labkit similarity`` (chosen measures between the layers of two
runs, with an optional permutation null) and its alias ``labkit cka``. Layer names are
checked when a spec is validated; ``stitch-table`` checks every cell before training,
records unstitchable ones and goes on, averages over seed axes and summarises the latest
layer that can stitch; ``labkit report`` of such a grid shows its tables
(:mod:`labkit_stitch.report`). The measures are public: :mod:`labkit_stitch.cka`,
:mod:`labkit_stitch.measures`, chosen by name in :mod:`labkit_stitch.catalogue`,
calibrated in :mod:`labkit_stitch.calibration`. See README.md and docs/measures.md.
"""
from labkit.api import hookimpl
from labkit_stitch.report import report_sections
from labkit_stitch.stitching import AutoencoderStitch, StitchedParams, stitched


@hookimpl
def labkit_register(registries) -> None:
    registries.models.register("stitched", stitched, params=StitchedParams)
    registries.methods.register("autoencoder_stitch", AutoencoderStitch)


@hookimpl
def labkit_commands() -> list:
    from labkit_stitch.commands import COMMANDS  # click commands: only when the CLI asks

    return COMMANDS


@hookimpl
def labkit_report_sections(runs) -> list[tuple[str, str]]:
    """The stitching and CKA tables of a grid of stitch runs (:mod:`labkit_stitch.report`)."""
    return report_sections(runs)
