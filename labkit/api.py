"""The public API for plugin packages: everything a plugin may import from labkit.

Plugins import from here (and, in their tests, from :mod:`labkit.testing`), never from
labkit's internal modules, which may change between releases. The names below are
grouped by the layer they come from (see docs/architecture.md); this module sits above
all of them and nothing inside labkit imports it.

Hooks: decorate implementations with :data:`hookimpl` (see :mod:`labkit.core.hookspecs`).
"""
from __future__ import annotations

from labkit import __version__, hookimpl
from labkit.analyses import latents
from labkit.analyses.base import Analysis, FinishedRun
from labkit.analyses.layerwise import Latents
from labkit.cli import LabkitGroup, summarize
from labkit.cli.commands.analysis_common import finished_run
from labkit.cli.commands.common import check_device, load_runs
from labkit.cli.launch import INVALID
from labkit.cli.plugins import ALLOW_ENV, DISABLE_ENV, plugin_infos, plugin_manager, registries, use
from labkit.core.errors import DamagedFile, RunFailed, UserError
from labkit.core.registry import Registries, Seed, params_model
from labkit.data.bundle import DataBundle
from labkit.data.digits import TensorImages
from labkit.data.mixing import BatchMixer, hard_labels, mix_images, mix_targets
from labkit.data.splits import SplitDataset
from labkit.data.transforms import build_transform, check_augment
from labkit.engine import train
from labkit.engine.linked import ensure_trained, finished_link
from labkit.measures.layers import layer_name, measured_layers
from labkit.methods import Method, RunContext, StepResult, Supervised
from labkit.models import MODELS
from labkit.outputs.report import figure_html, html_table, labelled_runs, readable_log
from labkit.spec import expand, inline_run, load_spec_file, resolve, validate_json_types
from labkit.spec.run_ref import RunRef, linked_runs_of
from labkit.store import checkpoint, runinfo
from labkit.store.atomic import atomic_open, write_csv, write_figure, write_json, write_text
from labkit.store.identity import (NOT_IDENTITY, RunConfig, flatten, identity_config, note_outside,
                                   run_hash, varying_keys)
from labkit.store.readers import read_csv_file, read_json_file, read_npy_file
from labkit.store.run_ref import RunInFolder, RunReference, read_run, run_in_folder
from labkit.store.runinfo import PinnedRef, RunFingerprint, is_trained, run_fingerprint
from labkit.training.build import build_component, make_metrics, meta_model, seed_everything
from labkit.training.evaluation import evaluate, to_device
from labkit.training.progress import note, step, track
from labkit.training.schedules import Schedule, Scheduled, value_at

__all__ = [
    # hooks and version
    "hookimpl", "__version__",
    # core
    "UserError", "DamagedFile", "Registries", "params_model", "Seed",
    # store: run identity, run files, checkpoints, atomic writes
    "RunConfig", "NOT_IDENTITY", "run_hash", "identity_config", "flatten", "varying_keys",
    "note_outside",
    "runinfo", "checkpoint", "RunFingerprint", "PinnedRef", "is_trained", "run_fingerprint", "write_csv", "write_figure", "write_json", "write_text", "atomic_open",
    "read_run", "run_in_folder", "RunReference", "RunInFolder",
    # store: reading any file back safely (one DamagedFile line for any bytes)
    "read_json_file", "read_csv_file", "read_npy_file",
    # components: specs, data, models, methods, layers
    "expand", "resolve", "inline_run", "load_spec_file", "validate_json_types",
    "RunRef", "linked_runs_of",
    "build_component", "make_metrics",
    "seed_everything", "meta_model", "evaluate", "to_device", "DataBundle", "SplitDataset",
    "TensorImages", "build_transform", "check_augment", "mix_images", "mix_targets",
    "hard_labels", "BatchMixer", "MODELS", "Method", "RunContext",
    "StepResult", "Supervised", "layer_name", "measured_layers", "Schedule", "Scheduled",
    "value_at",
    # progress of long work: bars on a terminal, lines in logs, nothing under --quiet
    "track", "step", "note",
    # workflows: training, analyses, latents; the report's building blocks (plugin sections)
    "train", "ensure_trained", "finished_link", "RunFailed", "Analysis", "FinishedRun",
    "Latents", "latents", "html_table", "figure_html", "readable_log", "labelled_runs",
    # orchestration: plugins, commands
    "registries", "use", "plugin_manager", "plugin_infos", "ALLOW_ENV", "DISABLE_ENV",
    "load_runs", "finished_run", "check_device", "summarize", "LabkitGroup", "INVALID",
]
