"""One run on several processes (GPUs of a node, or CPU processes) through torch.distributed.

``labkit run SPEC --run-id ID --nproc N`` (the spec's ``nproc``) trains each run with N
processes started the way ``torchrun --standalone`` starts them: torch's elastic launcher
(:func:`launch`) spawns them with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a
rendezvous in the environment; under SLURM (or submitit's local executor) a job runs
``nproc`` tasks per node instead, which take the same variables from
:func:`task_environment`; ``torchrun`` itself may start them too
(:func:`started_as_rank`). Each process then calls
:func:`init`: NCCL on GPUs (process ``r`` computes on ``cuda:LOCAL_RANK``), gloo on
CPU.

What the processes share (the engine does it; this module has the primitives):

* data: every optimizer step's global batch of ``batch_size`` samples is drawn from the
  run's seeded order as in a one-process run and split into N contiguous shards, one
  per process (``batch_size`` must divide by N);
* gradients: each process back-propagates the *sum* of its shard's losses; the
  gradients, the sample count and the loss sum are summed over processes in one
  flattened all-reduce (:func:`all_reduce_sum`) and divided by the global sample
  count, so a step is the mean over the global batch, as DistributedDataParallel's
  averaging is for equal shards. A method's several networks (teacher, student) need no
  wrapper: only the optimizer's parameters are reduced;
* buffers (BatchNorm running statistics): process 0's are broadcast to the others before
  every evaluation and checkpoint (:func:`broadcast_buffers`), as DDP's
  ``broadcast_buffers`` does before each forward pass;
* training-pass statistics: loss sums, metric counts and saturation covariances are
  summed over processes at the end of the pass, so the log holds the same numbers a
  one-process pass over the same batches would. Evaluation passes run whole on every
  process (same weights, same buffers: same results), and only process 0 writes.

Process 0 writes checkpoints, logs and status; every process's RNG state is gathered
into the checkpoint (:func:`gather`), so a resumed N-process run continues bit for bit.
"""
from __future__ import annotations

import hashlib
import logging
import os
import uuid
from typing import Any, Callable

import submitit
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from labkit.core.errors import UserError


def active() -> bool:
    """Whether this process belongs to an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Processes of the run (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return rank() == 0


def init(device: str) -> str:
    """Join the process group the launcher's environment describes; returns the device
    this process computes on (``cuda:LOCAL_RANK`` for a CUDA run, else ``device``).

    Raises:
        UserError: a CUDA run with more processes than visible GPUs.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if local >= torch.cuda.device_count():
            raise UserError(f"process {local} of the run has no GPU: {torch.cuda.device_count()} "
                            f"visible; lower --nproc to at most that")
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if not active():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def shutdown() -> None:
    """Leave the process group (if any)."""
    if active():
        dist.destroy_process_group()


def launch(entry: Callable[..., Any], nproc: int, *args: Any) -> dict[int, Any]:
    """Run ``entry(*args)`` in ``nproc`` new processes on this machine, as ``torchrun
    --standalone --nproc-per-node nproc`` would (torch's elastic launcher, a c10d
    rendezvous on a free local port, no restarts); returns each rank's return value.

    Raises:
        torch.distributed.elastic.multiprocessing.errors.ChildFailedError: a process
            failed (its error is in the exception).
    """
    # the launcher logs every failed process's traceback; the run's status has the reason
    for name in ("torch.distributed.elastic", "torch.multiprocessing.spawn"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          run_id=str(uuid.uuid4()), rdzv_backend="c10d",
                          rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    return elastic_launch(config, entry)(*args)


def task_environment() -> dict[str, str]:
    """The torch.distributed variables of a submitit task (SLURM, or submitit's local
    executor) whose job asked for several tasks: rank, world size, local rank, and the
    job's first host as the rendezvous. Empty outside such a job."""
    try:
        job = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return {}
    if job.num_tasks < 2:
        return {}
    port = 20000 + int(hashlib.sha256(str(job.job_id).encode()).hexdigest(), 16) % 20000
    return {"RANK": str(job.global_rank), "WORLD_SIZE": str(job.num_tasks),
            "LOCAL_RANK": str(job.local_rank), "MASTER_ADDR": job.hostnames[0],
            "MASTER_PORT": str(port)}


def started_as_rank(nproc: int) -> bool:
    """Whether this process is one of ``nproc`` that a launcher started (torchrun, or a
    submitit job's tasks: :func:`task_environment`) and has not yet joined its group."""
    return not active() and os.environ.get("WORLD_SIZE") == str(nproc) and nproc > 1


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum ``tensors`` over the processes in place, in one flattened all-reduce (a
    no-op in a one-process run)."""
    if not active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def broadcast_buffers(modules: list[nn.Module]) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics)."""
    if not active():
        return
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def gather(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order; ``[value]`` alone."""
    if not active():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    """Wait for every process (a no-op alone)."""
    if active():
        dist.barrier()
