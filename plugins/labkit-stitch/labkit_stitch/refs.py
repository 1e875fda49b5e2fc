"""References to the networks being stitched: labkit runs, trained on demand.

A :class:`NetworkRef` (a :class:`labkit.api.RunRef`) names one run in one of two ways:

* ``{"dir": "logs/cnn_s/digits_16/A/cnn_s-…-3f2a9c01de"}``: the folder of a trained run,
  wherever it lies (any complete copy; :func:`labkit.api.read_run` reads that folder and
  nothing else, and refuses one that holds no trained run);
* ``{"spec": "specs/quickstart.json", "run_id": "demo", "where": {"model.name": "cnn_s"}}``:
  a grid point of a spec. The spec is a file or an inline spec object, and ``where``
  picks one run by dotted config keys (as ``labkit plan`` shows them); it is not needed
  when the spec has a single run.

A spec file is read when the referencing spec is validated, and its content is recorded
in place of the path. The stitch run's identity (a hash of its config) therefore follows
the content of the referenced run's spec: editing that spec gives new stitch runs,
never stale ones. A run directory is recorded with its fingerprint, ``run: {"hash": …,
"checkpoint": …}`` (the run's identity hash and the verified sha256 of the final
checkpoint in that folder), derived at validation: retraining that run gives new stitch
runs too. So a run directory must be trained when the stitch spec is validated. Every
network is read from its run's final checkpoint, the one the fingerprints name.

A run given by spec that has not finished is trained by the engine, with its own spec's
settings, the first time a trained network is asked of it (:func:`labkit.api.ensure_trained`).
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from labkit.api import (FinishedRun, RunConfig, RunRef, UserError, build_component, ensure_trained,
                        expand, flatten, load_spec_file, run_in_folder, runinfo, varying_keys)
from labkit.api import registries as labkit_registries


class NetworkRef(RunRef):
    """One labkit run: a run directory, or a spec (file or object), run-id and grid point."""

    # met at two JSON paths (sender, receiver), it has no ``path``: its mistakes are
    # ValueErrors, which spec validation names by their path
    noun = "referenced run"
    rerun = "run the stitch spec again (new stitch runs)"

    dir: str | None = Field(None, description="folder of a trained run (the folder holding "
                                              "config.json; any complete copy, wherever "
                                              "it lies)")
    spec: str | dict[str, Any] | None = Field(
        None, description="spec file or inline spec object describing the run; a file is "
                          "read at validation and its content recorded instead of the path")
    run_id: str | None = Field(None, description="run-id the spec's runs are trained under")
    where: dict[str, Any] = Field(
        {}, description="dotted config keys and values picking one grid point of the spec, "
                        "e.g. {\"model.name\": \"cnn_s\"}; not needed for a one-run spec")

    @field_validator("spec")
    @classmethod
    def _read_spec_file(cls, spec: str | dict[str, Any] | None) -> dict[str, Any] | None:
        try:  # ValueError: reported with the JSON path of the reference
            return load_spec_file(spec) if isinstance(spec, str) else spec
        except UserError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _picks_one_run(self) -> "NetworkRef":
        if self.dir is not None:
            if self.where:
                raise ValueError('"where" goes with "spec"; a "dir" names one run')
            return self
        if self.run_id is None:
            raise ValueError("\"spec\" needs \"run_id\", the run-id its runs are trained under")
        try:  # a wrong reference fails at validation, with its JSON path
            self.run_config()
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return self

    def run_config(self) -> RunConfig:
        """The referenced run; one given by ``dir`` is located at that folder.

        Raises:
            UserError: no run config in the folder (its checkpoint was verified at
                validation), an invalid spec, or ``where`` matching no run or several.
        """
        registries = labkit_registries()
        if self.dir is not None:
            return run_in_folder(self.dir, self.named("dir"))
        runs = [RunConfig(config, self.run_id) for config in expand(self.spec, registries)]
        flats = [flatten(run.config) for run in runs]
        unknown = [key for key in self.where if not any(key in flat for flat in flats)]
        if unknown:
            raise UserError(f"where: {', '.join(unknown)} is not a config key of the spec; "
                            f"keys that vary across its runs: "
                            f"{', '.join(varying_keys([r.config for r in runs])) or '(none)'}")
        chosen = [run for run, flat in zip(runs, flats)
                  if all(flat.get(key) == value for key, value in self.where.items())]
        if len(chosen) != 1:
            raise UserError(
                f"where {self.where} picks {len(chosen)} of the spec's {len(runs)} runs, not "
                f"one; add keys that vary across its runs: "
                f"{', '.join(varying_keys([r.config for r in runs]))}")
        return chosen[0]


def trained_network(run: RunConfig) -> nn.Module:
    """The final network of ``run`` (trained first if needed; read from the final
    checkpoint, whose digest the provenance records name), on the CPU, in eval mode."""
    ensure_trained(run, labkit_registries(), what=NetworkRef.noun, progress=True)
    return FinishedRun(run, labkit_registries(),
                       checkpoint_file=runinfo.final_checkpoint(run)).model


def random_network(run: RunConfig) -> nn.Module:
    """``run``'s architecture with fresh weights drawn from its seed, never trained.

    The random-sender baseline: what stitching gets from the architecture alone.
    """
    finished = FinishedRun(run, labkit_registries())
    data = finished.data
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.config["seed"])
        model = build_component(finished.registries, "models", run.config["model"],
                                num_classes=data.num_classes,
                                in_channels=data.in_channels, resolution=data.resolution)
    return model.eval()
