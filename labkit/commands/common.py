"""Helpers shared by every command: reading specs into runs, checking devices."""
from __future__ import annotations

from labkit import plugins
from labkit.errors import UserError
from labkit.identity import RunConfig
from labkit.spec import expand, load_spec_file


def load_runs(spec_path: str, run_id: str, device: str | None = None) -> list[RunConfig]:
    """Read, expand and validate a spec file into its runs (device override applied).

    Grid points with the same identity (e.g. ``"seed": [0, 0]``) are one run: training
    it twice would only race on one directory.
    """
    raw = load_spec_file(spec_path)
    if device is not None and isinstance(raw, dict):
        raw = {**raw, "device": device}
    runs: dict[str, RunConfig] = {}
    for config in expand(raw, plugins.registries()):
        run = RunConfig(config, run_id)
        runs.setdefault(run.hash, run)
    return list(runs.values())


def check_device(device: str) -> None:
    """Fail with a clear message when ``device`` cannot be used here."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"invalid device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available on this "
                        f"machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r} does not exist: this machine has "
                        f"{torch.cuda.device_count()} GPU(s)")
