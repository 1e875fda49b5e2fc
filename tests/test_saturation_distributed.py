"""Saturation tracked by several processes: ``SaturationTracker.all_reduce`` over gloo.

Two CPU processes each track half the batches of a pass and reduce; every process must
then hold the statistics of one process tracking all of them. No mocks: real
``torch.distributed`` process groups, spawned processes, a file store.
"""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from labkit.measures.saturation_tracker import SaturationTracker

WORLD = 2
STATS = ["lsat", "idim", "det", "trc"]
CONFIG = {"stats": STATS, "conv_method": "channelwise"}
# batch b goes to process b % WORLD and through head HEADS[b]: head 1 only ever runs on
# process 1, head 2 on none
HEADS = [0, 0, 0, 0, 0, 1]
# conv maps are multiplied in float32 blocks, so a different split into processes (and
# a different reference point per process) changes the rounding: the tracker's own
# tolerance against numpy; one data point per sample (the heads) is summed in float64
TOL = 1e-5


class TwoBodies(nn.Module):
    """A conv (channelwise: float32 products) feeding linear heads (float64 products)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.heads = nn.ModuleList([nn.Linear(6, 4) for _ in range(3)])

    def forward(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        return self.heads[head](torch.relu(self.conv(x)).mean((2, 3)))


def batches() -> list[torch.Tensor]:
    """Batches whose offset and scale change, far from the origin (large means)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16, 1, 8, 8, generator=g) * (1 + b) + 3 * b for b in range(len(HEADS))]


def track(model: nn.Module, indices) -> SaturationTracker:
    tracker = SaturationTracker(CONFIG, model, ["eval"])
    data = batches()
    with tracker.track("eval", model), torch.no_grad():
        for b in indices:
            model(data[b], HEADS[b])
        tracker.all_reduce()
        tracker.all_reduce()  # once per pass: a second call adds nothing
    return tracker


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        tracker = track(TwoBodies().eval(), range(rank, len(HEADS), WORLD))
        torch.save({"moments": tracker.moments("eval"), "columns": tracker.columns("eval")},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_processes_tracking_halves_report_the_whole_pass(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    alone = track(TwoBodies().eval(), range(len(HEADS)))  # no process group: all_reduce a no-op
    expected = alone.moments("eval")
    assert list(expected) == ["conv", "heads-0", "heads-1"]  # heads-2 never ran

    for result in results:
        moments = result["moments"]
        assert list(moments) == list(expected)
        for layer, (mean, cov) in expected.items():
            tol = TOL if layer == "conv" else 1e-10
            scale = cov.abs().max().item()
            torch.testing.assert_close(moments[layer][1], cov, rtol=tol, atol=tol * scale)
            torch.testing.assert_close(moments[layer][0], mean, rtol=tol,
                                       atol=tol * math.sqrt(scale))
        columns = result["columns"]
        assert list(columns) == list(alone.columns("eval"))
        for key, value in alone.columns("eval").items():
            if key.endswith("_heads-2"):
                assert math.isnan(value) and math.isnan(columns[key])
            elif "-intrinsic-dimensionality_" in key or "-saturation_" in key:
                assert columns[key] == value, key
            else:
                assert columns[key] == pytest.approx(value, rel=TOL), key
    # every process holds the same numbers, bit for bit
    for layer, (mean, cov) in results[0]["moments"].items():
        assert torch.equal(results[1]["moments"][layer][0], mean)
        assert torch.equal(results[1]["moments"][layer][1], cov)
    # and each half alone would not have matched: the reduction did the work
    half = track(TwoBodies().eval(), range(0, len(HEADS), WORLD)).moments("eval")
    assert not torch.allclose(half["conv"][1], expected["conv"][1], rtol=0.01)
