"""Every figure of a grid, and the folder that keeps them drawn (``labkit plot``).

:func:`grid_figures` lists a grid's figures as :class:`FigureJob` objects: what each
shows, which files it is drawn from and how to draw it. ``labkit plot`` draws them into
a folder, ``labkit report`` embeds them. File stems, relative to the folder:

* per run, in ``<run directory name>/``: ``learning_curves``, ``saturation_epochs``,
  ``distillation`` and ``dino_probes`` (:mod:`labkit.outputs.figures`, when the log
  has their data), and one projection figure per ``projected_results*.csv`` of the run,
  under that file's stem (:mod:`labkit.outputs.projection_plot`);
* per group of runs, in ``groups/<group>/``: ``tail_pattern`` (its runs' mean ± sd,
  :mod:`labkit.outputs.tail_plot`), ``learning_curves`` (its runs overlaid) and its
  projection figures; a group of one run has only its tail pattern there, and shows its
  run's learning and projection curves (drawn once);
* per grid: ``tail_pattern_by_<keys>`` always, and with several groups
  ``learning_curves_by_<keys>`` and ``<projection stem>_by_<keys>``, every group on one
  figure, coloured by the first key and styled by the second.

**Only what changed is drawn again.** A :class:`FigureFolder` keeps a manifest,
``figures-manifest.json``, with an entry per figure: the stat (size, mtime_ns,
ctime_ns, inode, device; :func:`labkit.store.file_digests.stat_key`) of every file the
figure is drawn from (present or not), its parameters (title, grouping keys, the runs
of each group) and the code that draws it (labkit's version and the stat of the
``labkit/outputs`` modules) and the formats it was written in. A figure whose entry
matches and whose files exist in every format asked for (``plot``: PNG and SVG, or its
``--format``; ``report``: the PNG it embeds) is kept as it is; any other is drawn again,
in the formats asked for and in every other format it has a file in, and a figure
whose data is gone loses its files (so that no file shows a figure as it was). A
figure drawn from a file modified less than two seconds before
(:data:`~labkit.store.file_digests.RACY_SECONDS`), or drawn while a damaged file was
left out, gets no entry, so it is drawn again next time (and the damage reported
again). A manifest that cannot be read counts as empty. ``labkit
report`` draws its figures through the same folder (``plot``'s default one), so that
a report after ``plot``, or a second report, draws only what changed.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import labkit
from labkit.core.errors import DamagedFile, UserError
from labkit.outputs import figures, projection_plot, tail_plot
from labkit.outputs.figures import Report
from labkit.store import runinfo
from labkit.store.atomic import write_json
from labkit.store.file_digests import RACY_SECONDS, stat_key
from labkit.store.identity import RunConfig, display_labels
from labkit.store.local_cache import read_record
from labkit.store.output_digests import RECORDS_DIR

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MANIFEST = "figures-manifest.json"
FORMAT = 1
Draw = Callable[[Report], "Figure | None"]


@dataclass
class FigureJob:
    """One figure: its file stem (relative to the folder), caption, the files it is
    drawn from, the parameters that decide it besides them, and how to draw it
    (``draw(on_damaged)``: ``None`` when its data is absent)."""

    stem: str
    caption: str
    inputs: list[Path]
    params: dict[str, Any]
    draw: Draw


@dataclass
class GridFigures:
    """A grid's figures: of the grid, of each group (by label), of each run (by hash)."""

    grid: list[FigureJob] = field(default_factory=list)
    groups: dict[str, list[FigureJob]] = field(default_factory=dict)
    runs: dict[str, list[FigureJob]] = field(default_factory=dict)

    def jobs(self) -> list[FigureJob]:
        """Every figure once: runs', groups', then the grid's (a group of one run shows
        figures of its run)."""
        every = [*(j for jobs in self.runs.values() for j in jobs),
                 *(j for jobs in self.groups.values() for j in jobs), *self.grid]
        return list({job.stem: job for job in every}.values())


def records(run_dir: Path) -> list[Path]:
    """The run's analysis records (they decide which outputs count as damaged)."""
    return sorted((Path(run_dir) / RECORDS_DIR).glob("*.json"))


def run_inputs(run_dir: Path) -> list[Path]:
    """Every file a grouped figure may read of a run: its config, log, tables and
    analysis records, and the intrinsic-dimension table even while absent."""
    run_dir = Path(run_dir)
    tables = sorted(run_dir.glob("*.csv"))
    wanted = [run_dir / runinfo.CONFIG_JSON, run_dir / runinfo.LOG_CSV,
              run_dir / tail_plot.INTRINSIC_CSV]
    return list(dict.fromkeys([*wanted, *tables, *records(run_dir)]))


def _log_figure(run_dir: Path, draw: Callable[[Any, str], Figure | None], name: str) -> Draw:
    def drawn(on_damaged: Report) -> Figure | None:
        try:
            log = runinfo.read_log(run_dir)
        except DamagedFile as exc:
            on_damaged(f"no figures of run {run_dir.name}: {exc}")
            return None
        return None if log is None else draw(log, name)
    return drawn


def _run_jobs(run: RunConfig, label: str, name: str) -> list[FigureJob]:
    """The figures of one run (see the module docstring)."""
    directory, folder = run.directory, run.directory.name
    title = f"run {label} [{run.hash}], {name}"
    base = [directory / runinfo.CONFIG_JSON, directory / runinfo.LOG_CSV]
    config = run.config
    per_log: dict[str, Callable[[Any, str], Figure | None]] = {
        "learning_curves": figures.learning_curves,
        "saturation_epochs": lambda log, n: figures.saturation_epochs(log, n, config),
        "distillation": figures.distillation, "dino_probes": figures.dino_probes}
    jobs = [FigureJob(f"{folder}/{stem}", f"{stem.replace('_', ' ')}: {label}", base,
                      {"title": title}, _log_figure(directory, draw, title))
            for stem, draw in per_log.items()]
    for path in sorted(directory.glob(projection_plot.PATTERN)):
        jobs.append(FigureJob(
            f"{folder}/{path.stem}", f"projection ({path.name}): {label}",
            [path, *records(directory)], {"title": title},
            _projection_figure({"this run": [run]}, path.name, title)))
    return jobs


def _projection_figure(groups: dict[str, list[RunConfig]], file: str, name: str,
                       styles: dict[str, figures.Style] | None = None) -> Draw:
    def drawn(on_damaged: Report) -> Figure | None:
        problems: list[str] = []
        tables = {label: [t for r in members
                          for f, t in projection_plot.projection_tables(r.directory,
                                                                        problems).items()
                          if f == file] for label, members in groups.items()}
        for line in problems:
            on_damaged(f"left out of the projection figure: {line}")
        return projection_plot.projection_curves(tables, f"{name}; {file}", styles)
    return drawn


def _tail_figure(groups: dict[str, list[RunConfig]], name: str,
                 styles: dict[str, figures.Style] | None = None) -> Draw:
    def drawn(on_damaged: Report) -> Figure | None:
        data = {label: [tail_plot.tail_data(r.directory, config=r.config) for r in members]
                for label, members in groups.items()}
        for line in dict.fromkeys(p for runs in data.values() for r in runs
                                  for p in r.problems):
            on_damaged(f"left out of the tail pattern: {line}")
        return tail_plot.tail_pattern(data, name, styles)
    return drawn


def _curves_figure(groups: dict[str, list[RunConfig]], labels: dict[str, str], name: str,
                   styles: dict[str, figures.Style] | None = None) -> Draw:
    """Learning curves: of one group's runs overlaid (``styles`` None), or of every
    group's mean."""
    def drawn(on_damaged: Report) -> Figure | None:
        logs: dict[str, dict[str, Any]] = {}
        for label, members in groups.items():
            logs[label] = {}
            for run in members:
                try:
                    log = runinfo.read_log(run.directory)
                except DamagedFile as exc:
                    on_damaged(f"left out of the learning curves: {exc}")
                    continue
                if log is not None:
                    logs[label][labels[run.hash]] = log
        if styles is None:
            return figures.learning_curves(next(iter(logs.values())), name)
        return figures.grid_learning_curves({k: list(v.values()) for k, v in logs.items()},
                                            styles, name)
    return drawn


def slugs(labels: Sequence[str]) -> dict[str, str]:
    """Group label → a folder name made of it (``model=cnn_s_lr=0.1``), unique."""
    found: dict[str, str] = {}
    for label in labels:
        slug = re.sub(r"[^A-Za-z0-9=._+-]+", "_", label).strip("_.") or "group"
        while slug in found.values():
            slug += "_"
        found[label] = slug
    return found


def grid_figures(runs: Sequence[RunConfig], keys: Sequence[str], name: str) -> GridFigures:
    """The figures of the started ``runs`` grouped by the values of ``keys`` (see the
    module docstring); ``name`` (the grid) goes into every title."""
    runs = [r for r in runs if r.directory.is_dir()]
    result = GridFigures()
    if not runs:
        return result
    labels = dict(zip((r.hash for r in runs), display_labels([r.config for r in runs])[0]))
    groups = figures.group_runs(runs, keys)
    membership = {label: [r.hash for r in members] for label, members in groups.items()}
    for run in runs:
        result.runs[run.hash] = _run_jobs(run, labels[run.hash], name)
    projections = sorted({p.name for r in runs
                          for p in r.directory.glob(projection_plot.PATTERN)})
    folders = slugs(list(groups))
    for label, members in groups.items():
        folder = f"groups/{folders[label]}"
        inputs = [p for r in members for p in run_inputs(r.directory)]
        params = {"name": name, "group": label, "runs": membership[label]}
        title = f"{name}; group {label}"
        one = {label: members}
        jobs = [FigureJob(f"{folder}/tail_pattern", f"Tail pattern of {label}", inputs,
                          params, _tail_figure(one, title))]
        if len(members) == 1:  # its learning and projection curves are its run's
            own = result.runs[members[0].hash]
            jobs += [job for job in own if Path(job.stem).name == "learning_curves"
                     or Path(job.stem).name in {Path(f).stem for f in projections}]
        else:
            inside = dict(zip((r.hash for r in members),
                              display_labels([r.config for r in members])[0]))
            jobs.append(FigureJob(f"{folder}/learning_curves",
                                  f"Learning curves of the runs of {label}", inputs, params,
                                  _curves_figure(one, inside, title)))
            jobs += [FigureJob(f"{folder}/{Path(file).stem}",
                               f"Projection curves of {label} ({file})", inputs, params,
                               _projection_figure(one, file, title)) for file in projections]
        result.groups[label] = jobs
    styles = figures.group_styles(groups, keys)
    inputs = [p for r in runs for p in run_inputs(r.directory)]
    params = {"name": name, "keys": list(keys), "groups": membership}
    by = figures.grouping_name(keys)
    grouped = f"{name}, {by}"
    result.grid.append(FigureJob(figures.grid_stem(keys), f"Tail pattern of every group, {by}",
                                 inputs, params, _tail_figure(groups, grouped, styles)))
    if len(groups) > 1:
        result.grid.append(FigureJob(
            figures.grid_stem(keys, "learning_curves"),
            f"Learning curves of every group (mean ± sd over each group's runs), {by}",
            inputs, params, _curves_figure(groups, labels, grouped, styles)))
        result.grid += [FigureJob(figures.grid_stem(keys, Path(file).stem),
                                  f"Projection curves of every group ({file}), {by}", inputs,
                                  params, _projection_figure(groups, file, grouped, styles))
                        for file in projections]
    return result


# ---------------------------------------------------------------- the folder

def code_version() -> dict[str, Any]:
    """labkit's version and the stat of the modules that draw figures: a figure drawn by
    other code is drawn again."""
    modules = sorted(Path(figures.__file__).parent.glob("*.py"))
    return {"labkit": labkit.__version__,
            "modules": {p.name: stat_key(p)[:2] for p in modules}}


def _stat(path: Path) -> list[int] | None:
    try:
        return stat_key(path)
    except OSError:
        return None


@dataclass
class Drawn:
    """What :meth:`FigureFolder.draw` did: the file of every figure drawn and of every
    figure kept (in the first format asked for), the PNG of every figure with data, by
    stem (when PNG was asked for), and how many processes drew them."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    pngs: dict[str, Path] = field(default_factory=dict)
    workers: int = 1


class FigureFolder:
    """A folder of figures with its manifest (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        record = read_record(self.folder / MANIFEST)
        valid = isinstance(record, dict) and record.get("format") == FORMAT \
            and isinstance(record.get("figures"), dict)
        self.entries: dict[str, Any] = dict(record["figures"]) if valid else {}
        self._code = code_version()

    def fingerprint(self, job: FigureJob) -> dict[str, Any]:
        """What the figure of ``job`` is drawn from, as stored in the manifest."""
        return json.loads(json.dumps({
            "inputs": {str(p): _stat(p) for p in dict.fromkeys(job.inputs)},
            "params": job.params, "code": self._code}, default=str))

    def paths(self, job: FigureJob, formats: Sequence[str] = figures.FORMATS) -> list[Path]:
        """The files of ``job`` in ``formats``."""
        return [self.folder / f"{job.stem}.{fmt}" for fmt in formats]

    def current(self, job: FigureJob, formats: Sequence[str] = figures.FORMATS) -> bool:
        """Whether the folder holds the figure of ``job``, in every one of ``formats``, as
        its inputs are now (or knows that it has no data)."""
        entry = self.entries.get(job.stem)
        if not isinstance(entry, dict) or entry.get("fingerprint") != self.fingerprint(job):
            return False
        held = entry.get("formats", list(figures.FORMATS))
        return not entry.get("drawn") or (set(formats) <= set(held) and all(
            p.is_file() for p in self.paths(job, formats)))

    def draw(self, jobs: Sequence[FigureJob], on_damaged: Report = figures.warn,
             formats: Sequence[str] = figures.FORMATS) -> Drawn:
        """Draw every figure of ``jobs`` that is not current in ``formats`` (on several
        cores when :func:`drawing_workers` allows), keep the others, then write the
        manifest. A figure drawn again is also written in every other format it has a
        file in; one with no data now loses its files."""
        done = Drawn()
        todo = []
        for job in jobs:
            if not self.current(job, formats):
                todo.append(job)
            elif self.entries[job.stem].get("drawn"):
                done.kept.append(self.paths(job, formats)[0])
                if "png" in formats:
                    done.pngs[job.stem] = self.folder / f"{job.stem}.png"
        # taken before drawing: an input that changes meanwhile makes the figure stale
        fingerprints = [self.fingerprint(job) for job in todo]
        # a figure drawn again is written in every format it has a file in, too: no file
        # in the folder keeps showing it as it was
        wanted = [[*formats, *(f for f in figures.ALL_FORMATS if f not in formats
                               and (self.folder / f"{job.stem}.{f}").exists())]
                  for job in todo]
        done.workers = drawing_workers(len(todo))
        for job, fingerprint, written_in, (written, problems) in zip(
                todo, fingerprints, wanted,
                draw_jobs(todo, self.folder, done.workers, wanted)):
            for line in problems:
                on_damaged(line)
            if written:
                done.written.append(written[0])
                if "png" in formats:
                    done.pngs[job.stem] = self.folder / f"{job.stem}.png"
            else:  # no data now: files drawn from earlier data would show what is gone
                for path in self.paths(job, figures.ALL_FORMATS):
                    path.unlink(missing_ok=True)
            settled = all(s is None or time.time_ns() - s[1] >= RACY_SECONDS * 1e9
                          for s in fingerprint["inputs"].values())
            self.entries.pop(job.stem, None)
            if settled and not problems:
                self.entries[job.stem] = {"fingerprint": fingerprint, "drawn": bool(written),
                                          "formats": written_in}
        if done.written or self.entries:
            write_json(self.folder / MANIFEST, {"format": FORMAT, "figures": self.entries})
        return done


# ---------------------------------------------------------------- drawing on several cores

FIGURES_PER_WORKER = 3
"""Least figures per drawing worker: a forked worker costs little (matplotlib and the
data are inherited), but fewer figures than this are drawn in the process itself."""
WORKERS_ENV = "LABKIT_FIGURE_WORKERS"
"""How many processes may draw figures (default: the cores this process may use; 1: draw
in the process itself)."""


def drawing_workers(count: int) -> int:
    """Processes that draw ``count`` figures: one per core this process may use (or
    ``$LABKIT_FIGURE_WORKERS``), at most one per :data:`FIGURES_PER_WORKER` figures;
    1 (this process) where forking is unsafe: torch imported (its thread pools do not
    survive a fork), other threads running, or not Linux (macOS's system libraries do
    not survive one either, which is why Python no longer forks there).

    Raises:
        UserError: ``LABKIT_FIGURE_WORKERS`` is not a positive whole number.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    limit = os.environ.get(WORKERS_ENV, "").strip()
    if limit:
        if not limit.isdigit() or int(limit) < 1:
            raise UserError(f"{WORKERS_ENV}={limit!r} is not a number of processes; set "
                            f"it to a whole number of at least 1 (1 draws in this process), "
                            f"or unset it to use every core")
        cores = int(limit)
    if (count < 2 * FIGURES_PER_WORKER or "torch" in sys.modules
            or threading.active_count() > 1
            or not sys.platform.startswith("linux")):
        return 1
    return max(1, min(cores, count // FIGURES_PER_WORKER))


def draw_job(job: FigureJob, folder: Path,
             formats: Sequence[str] = figures.FORMATS) -> tuple[list[Path], list[str]]:
    """Draw ``job`` into ``folder`` in ``formats``: the files written (none when it has
    no data) and the lines its drawing reported (damaged files left out)."""
    problems: list[str] = []
    figure = job.draw(problems.append)
    return ([] if figure is None else figures.save(figure, folder / job.stem, formats)), \
        problems


_FORKED: list[tuple[FigureJob, Path, Sequence[str]]] = []
"""The jobs of :func:`draw_jobs` while forked workers draw them: inherited by the
workers, so that the drawing functions (closures) need no pickling."""


def _draw_forked(index: int) -> tuple[list[Path], list[str]]:
    return draw_job(*_FORKED[index])


def draw_jobs(jobs: Sequence[FigureJob], folder: Path, workers: int,
              formats: Sequence[Sequence[str]]) -> list[tuple[list[Path], list[str]]]:
    """:func:`draw_job` of each of ``jobs``, in order, in the formats of the same index
    of ``formats``, in this process or on ``workers`` forked processes
    (:func:`drawing_workers` says how many may be; a worker that dies fails the call:
    BrokenProcessPool)."""
    tasks = [(job, folder, fmts) for job, fmts in zip(jobs, formats)]
    if workers <= 1:
        return [draw_job(*task) for task in tasks]
    _FORKED[:] = tasks
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_draw_forked, range(len(jobs))))
    finally:
        _FORKED.clear()
