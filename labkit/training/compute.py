"""What a run costs: forward FLOPs per image, the samples its optimizer steps see, and
``computational_info.json``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from labkit.core.errors import DamagedFile
from labkit.store import runinfo
from labkit.store.atomic import write_json
from labkit.store.readers import read_json


def flops_per_image(model: torch.nn.Module, in_channels: int, resolution: int,
                    device: torch.device) -> int:
    """Forward FLOPs of one image, counted by torch's own FLOP counter (eval mode)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_channels, resolution, resolution, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def trained_samples(samples: int, batches: int, batch_size: int, steps_per_epoch: int,
                    total_steps: int, accumulate: int) -> int:
    """Samples the run's ``total_steps`` optimizer steps see: whole epochs of
    ``samples`` (less those a dropped last batch leaves out), then the first batches
    of the epoch the step budget ends in."""
    per_epoch = min(samples, batches * batch_size)
    epochs, steps = divmod(total_steps, steps_per_epoch)
    return epochs * per_epoch + min(per_epoch, steps * accumulate * batch_size)


def write_computational_info(run_dir: Path, model: torch.nn.Module, data: Any,
                             device: torch.device, epochs: int, steps: int,
                             samples: int) -> None:
    """Write ``computational_info.json`` unless it holds exactly this already.

    ``epochs``, ``steps``, ``samples``: the epochs, optimizer steps and training
    samples the run trains (under a ``steps`` budget, fewer than the config's epochs
    give). Training FLOPs use the usual convention backward ≈ 2 × forward, so one
    training sample costs 3 × forward FLOPs.
    """
    per_image = flops_per_image(model, data.in_channels, data.resolution, device)
    info = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops_per_image": per_image,
        "train_samples": len(data.train),
        "epochs": epochs,
        "steps": steps,
        "trained_samples": samples,
        "training_flops": 3 * per_image * samples,
    }
    path = Path(run_dir) / runinfo.COMPUTE_JSON
    try:
        if read_json(path) == info:
            return
    except DamagedFile:  # replaced
        pass
    write_json(path, info)


