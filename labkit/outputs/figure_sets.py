"""Every figure of a grid, and the folder that keeps them drawn (``labkit plot``).

:func:`grid_figures` lists a grid's figures as :class:`FigureJob` objects: what each
shows, which files it is drawn from and how to draw it. ``labkit plot`` draws them into
a folder, ``labkit report`` embeds them. File stems, relative to the folder:

* per run, in ``<run directory name>/``: ``learning_curves``, ``saturation_epochs``,
  ``distillation`` and ``dino_probes`` (:mod:`labkit.outputs.figures`, when the log
  has their data), one projection figure per ``projected_results*.csv`` of the run,
  under that file's stem (:mod:`labkit.outputs.projection_plot`), and, for a run alone
  in its group, ``tail_pattern`` (:mod:`labkit.outputs.tail_plot`);
* per group of several runs, in ``groups/<group>/``: ``tail_pattern`` (its runs' mean ±
  sd), ``learning_curves`` (its runs overlaid) and its projection figures; a group of
  one run has none there, and shows its run's tail pattern, learning and projection
  curves (drawn once);
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
(:data:`~labkit.store.file_digests.RACY_SECONDS`: a write within the same clock tick
could leave the stat as it is) keeps the file's sha256 in its entry too, and is current
only while the content matches (once the stat is older than that window, the stat alone
decides and the digest is dropped); one drawn while a damaged file was left out gets no
entry, so it is drawn again next time (and the damage reported again). A manifest that
cannot be read counts as empty. ``labkit report`` draws its figures through the same
folder (``plot``'s default one), so that a report after ``plot``, or a second report,
draws only what changed.

**A run's figures are drawn once.** ``labkit run`` draws each run's figures
(:func:`run_jobs`) into the run's own folder, ``<run>/plots/`` (a :class:`FigureFolder`
with its manifest), titled as the grid titles them (:func:`run_titles`); a grid's job
names that file as its ``source``, and is copied from there while the entry there is
current, instead of drawn again.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import labkit
from labkit.core.errors import DamagedFile, UserError
from labkit.outputs import figures, projection_plot, tail_plot
from labkit.outputs.figures import Report
from labkit.store import runinfo
from labkit.store.atomic import atomic_open, file_sha256, write_json
from labkit.store.file_digests import RACY_SECONDS, stat_key
from labkit.store.identity import RunConfig, display_labels
from labkit.store.local_cache import read_record
from labkit.store.output_digests import RECORDS_DIR
from labkit.training.progress import track

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
    source: Path | None = None
    """The same figure in another figure folder (a run's own ``plots/``, as stem):
    copied from there while it is current there, instead of drawn again."""


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


RUN_FIGURES_DIR = "plots"
"""A run's own figure folder, ``<run>/plots/``: its log figures, drawn by ``labkit run``
(:func:`run_jobs`), and its per-epoch saturation plots."""
LOG_FIGURES = ("learning_curves", "saturation_epochs", "distillation", "dino_probes")
TAIL = "tail_pattern"
"""A run's tail pattern: in the grid's folder only for a run alone in its group (its
group's tail pattern), in the run's own folder always."""


def grid_name(runs: Sequence[RunConfig]) -> str:
    """``grid <spec name>, run-id <ID>``: what the figures of ``runs`` say they show."""
    return f"grid {runs[0].config['name']}, run-id {runs[0].run_id}"


def run_labels(runs: Sequence[RunConfig]) -> dict[str, str]:
    """Run hash → the run's label among ``runs``, every run of a grid (started or not,
    so that a run's label, and the titles of its figures, do not change as the others
    start): :func:`~labkit.store.identity.display_labels`."""
    return dict(zip((r.hash for r in runs), display_labels([r.config for r in runs])[0]))


def run_title(run: RunConfig, label: str, name: str) -> str:
    """The title of a run's figures: ``run <label> [<hash>], <grid name>``."""
    return f"run {label} [{run.hash}], {name}"


def run_titles(runs: Sequence[RunConfig]) -> dict[str, str]:
    """Run hash → the title of its figures in the grid of ``runs`` (:func:`run_title`):
    what ``labkit run`` gives each run, so that ``plot`` copies the figures the run
    drew instead of drawing them again."""
    labels, name = run_labels(runs), grid_name(runs)
    return {r.hash: run_title(r, labels[r.hash], name) for r in runs}


def run_jobs(run: RunConfig, title: str, label: str = "", folder: str = "") -> list[FigureJob]:
    """The figures of one run, titled ``title``, stems under ``folder``: those drawn from
    its log (:data:`LOG_FIGURES`) and one per ``projected_results*.csv`` (see the module
    docstring). In a grid's folder each names the same figure in the run's own folder
    (:data:`RUN_FIGURES_DIR`) as its source."""
    directory, config = run.directory, run.config
    base = [directory / runinfo.CONFIG_JSON, directory / runinfo.LOG_CSV]
    per_log: dict[str, Callable[[Any, str], Figure | None]] = {
        "learning_curves": figures.learning_curves,
        "saturation_epochs": lambda log, n: figures.saturation_epochs(log, n, config),
        "distillation": figures.distillation, "dino_probes": figures.dino_probes}
    jobs = [FigureJob(stem, f"{stem.replace('_', ' ')}: {label}", base, {"title": title},
                      _log_figure(directory, per_log[stem], title)) for stem in LOG_FIGURES]
    jobs.append(FigureJob(TAIL, f"Tail pattern of {label}", run_inputs(directory),
                          {"title": title}, _tail_figure({"this run": [run]}, title)))
    for path in sorted(directory.glob(projection_plot.PATTERN)):
        jobs.append(FigureJob(
            path.stem, f"projection ({path.name}): {label}", [path, *records(directory)],
            {"title": title}, _projection_figure({"this run": [run]}, path.name, title)))
    if not folder:
        return jobs
    own = directory / RUN_FIGURES_DIR
    return [replace(job, stem=f"{folder}{job.stem}", source=own / job.stem) for job in jobs]


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
    labels = run_labels(runs)  # of every run: those :func:`run_titles` gives
    runs = [r for r in runs if r.directory.is_dir()]
    result = GridFigures()
    if not runs:
        return result
    groups = figures.group_runs(runs, keys)
    membership = {label: [r.hash for r in members] for label, members in groups.items()}
    alone = {members[0].hash for members in groups.values() if len(members) == 1}
    for run in runs:  # a run's tail pattern is its group's, when it is alone there
        result.runs[run.hash] = [
            job for job in run_jobs(run, run_title(run, labels[run.hash], name),
                                    labels[run.hash], f"{run.directory.name}/")
            if run.hash in alone or Path(job.stem).name != TAIL]
    projections = sorted({p.name for r in runs
                          for p in r.directory.glob(projection_plot.PATTERN)})
    folders = slugs(list(groups))
    for label, members in groups.items():
        folder = f"groups/{folders[label]}"
        inputs = [p for r in members for p in run_inputs(r.directory)]
        params = {"name": name, "group": label, "runs": membership[label]}
        title = f"{name}; group {label}"
        one = {label: members}
        if len(members) == 1:  # its tail pattern, learning and projection curves: its run's
            shown = {TAIL, "learning_curves", *(Path(f).stem for f in projections)}
            jobs = sorted((job for job in result.runs[members[0].hash]
                           if Path(job.stem).name in shown),
                          key=lambda job: Path(job.stem).name != TAIL)  # the finding first
        else:
            jobs = [FigureJob(f"{folder}/{TAIL}", f"Tail pattern of {label}", inputs,
                              params, _tail_figure(one, title))]
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
    copied: int = 0


class FigureFolder:
    """A folder of figures with its manifest (see the module docstring)."""

    def __init__(self, folder: Path, digests: dict[str, str | None] | None = None) -> None:
        """The folder ``folder`` as its manifest says; ``digests``: the sha256 of files
        read already (path → digest), shared with another folder's checks."""
        self.folder = Path(folder)
        record = read_record(self.folder / MANIFEST)
        valid = isinstance(record, dict) and record.get("format") == FORMAT \
            and isinstance(record.get("figures"), dict)
        self.entries: dict[str, Any] = dict(record["figures"]) if valid else {}
        self._code = code_version()
        self._digests = {} if digests is None else digests  # each file read once

    def fingerprint(self, job: FigureJob) -> dict[str, Any]:
        """What the figure of ``job`` is drawn from, as stored in the manifest."""
        return json.loads(json.dumps({
            "inputs": {os.path.abspath(p): _stat(p) for p in dict.fromkeys(job.inputs)},
            "params": job.params, "code": self._code}, default=str))

    def paths(self, job: FigureJob, formats: Sequence[str] = figures.FORMATS) -> list[Path]:
        """The files of ``job`` in ``formats``."""
        return [self.folder / f"{job.stem}.{fmt}" for fmt in formats]

    def current(self, job: FigureJob, formats: Sequence[str] = figures.FORMATS,
                fingerprint: dict[str, Any] | None = None) -> bool:
        """Whether the folder holds the figure of ``job``, in every one of ``formats``, as
        its inputs are now (or knows that it has no data); ``fingerprint``: the job's,
        when the caller has taken it already.

        An input the entry holds by content (racy when drawn) counts while its sha256
        matches; once its stat is older than the racy window it is held by the stat
        alone (the entry forgets the digest), so no file is read again at every check."""
        fingerprint = fingerprint or self.fingerprint(job)
        entry = self.entries.get(job.stem)
        if not isinstance(entry, dict) or entry.get("fingerprint") != fingerprint:
            return False
        racy = entry.get("racy", {})
        if not isinstance(racy, dict) or any(self._sha256(p) != d for p, d in racy.items()):
            return False
        if racy:
            entry["racy"] = {p: d for p, d in racy.items() if p in _racy(fingerprint)}
        held = entry.get("formats", list(figures.FORMATS))
        return not entry.get("drawn") or (set(formats) <= set(held) and all(
            p.is_file() for p in self.paths(job, formats)))

    def draw(self, jobs: Sequence[FigureJob], on_damaged: Report = figures.warn,
             formats: Sequence[str] = figures.FORMATS, progress: bool = False) -> Drawn:
        """Draw every figure of ``jobs`` that is not current in ``formats`` (copied from
        its source where current there, else drawn: on several cores when
        :func:`drawing_workers` allows), keep the others, then write the manifest. A
        figure drawn again is also written in every other format it has a file in; one
        with no data now loses its files. ``progress``: say which figure is drawn
        (:func:`labkit.training.progress.track`)."""
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
        racy = [{p: self._sha256(p) for p in _racy(fingerprint)} for fingerprint in fingerprints]
        # a figure drawn again is written in every format it has a file in, too: no file
        # in the folder keeps showing it as it was
        wanted = [[*formats, *(f for f in figures.ALL_FORMATS if f not in formats
                               and (self.folder / f"{job.stem}.{f}").exists())]
                  for job in todo]
        outcomes: dict[int, tuple[list[Path], list[str]]] = {}
        origins: dict[Path, FigureFolder] = {}  # each source folder's manifest read once
        for i, job in enumerate(todo):
            copied = self._copy(job, wanted[i], fingerprints[i], origins)
            if copied is not None:
                outcomes[i], racy[i] = (copied[0], []), copied[1]
                done.copied += 1
        drawing = [i for i in range(len(todo)) if i not in outcomes]
        done.workers = drawing_workers(len(drawing))
        outcomes.update(zip(drawing, draw_jobs([todo[i] for i in drawing], self.folder,
                                               done.workers, [wanted[i] for i in drawing],
                                               progress)))
        for i, job in enumerate(todo):
            written, problems = outcomes[i]
            for line in problems:
                on_damaged(line)
            if written:
                done.written.append(written[0])
                if "png" in formats:
                    done.pngs[job.stem] = self.folder / f"{job.stem}.png"
            else:  # no data now: files drawn from earlier data would show what is gone
                for path in self.paths(job, figures.ALL_FORMATS):
                    path.unlink(missing_ok=True)
            self.entries.pop(job.stem, None)
            if not problems:
                self.entries[job.stem] = {"fingerprint": fingerprints[i], "drawn": bool(written),
                                          "formats": wanted[i], "racy": racy[i]}
        if done.written or self.entries:
            write_json(self.folder / MANIFEST, {"format": FORMAT, "figures": self.entries})
        return done

    def _copy(self, job: FigureJob, formats: Sequence[str], fingerprint: dict[str, Any],
              origins: dict[Path, FigureFolder]) -> tuple[list[Path], dict] | None:
        """Copy the figure of ``job`` (of ``fingerprint``) in ``formats`` from its source
        folder (read into ``origins`` once), where it is current: the files written and
        the source's digests of racy inputs; ``None`` when it has to be drawn."""
        if job.source is None:
            return None
        folder = job.source.parent
        origin = origins[folder] = origins.get(folder) or FigureFolder(folder, self._digests)
        there = replace(job, stem=job.source.name, source=None)
        if not origin.current(there, formats, fingerprint) \
                or not origin.entries[there.stem].get("drawn"):
            return None
        written = []
        for source, path in zip(origin.paths(there, formats), self.paths(job, formats)):
            try:
                with open(source, "rb") as read, atomic_open(path, "wb") as write:
                    shutil.copyfileobj(read, write)
            except OSError:  # gone meanwhile: drawn instead
                return None
            written.append(path)
        return written, origin.entries[there.stem].get("racy", {})


    def _sha256(self, path: str) -> str | None:
        """The sha256 of the file ``path`` (``None``: unreadable), read once per folder."""
        if path not in self._digests:
            try:
                self._digests[path] = file_sha256(Path(path))
            except OSError:
                self._digests[path] = None
        return self._digests[path]


def _racy(fingerprint: dict[str, Any]) -> list[str]:
    """The inputs of ``fingerprint`` modified less than
    :data:`~labkit.store.file_digests.RACY_SECONDS` ago: a write within the same clock
    tick could leave their stat as it is, so their content decides (git's racily clean
    files)."""
    now = time.time_ns()
    return [path for path, stat in fingerprint["inputs"].items()
            if stat is not None and now - stat[1] < RACY_SECONDS * 1e9]


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
              formats: Sequence[Sequence[str]],
              progress: bool = False) -> list[tuple[list[Path], list[str]]]:
    """:func:`draw_job` of each of ``jobs``, in order, in the formats of the same index
    of ``formats``, in this process or on ``workers`` forked processes
    (:func:`drawing_workers` says how many may be; a worker that dies fails the call:
    BrokenProcessPool); ``progress``: say which (:func:`~labkit.training.progress.track`)."""
    tasks = [(job, folder, fmts) for job, fmts in zip(jobs, formats)]
    names = [Path(job.stem).name for job in jobs]
    if workers <= 1:
        return _shown(names, (draw_job(*task) for task in tasks), progress)
    _FORKED[:] = tasks
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return _shown(names, pool.map(_draw_forked, range(len(jobs))), progress)
    finally:
        _FORKED.clear()


def _shown(names: list[str], results: Iterable[tuple[list[Path], list[str]]],
           progress: bool) -> list[tuple[list[Path], list[str]]]:
    """``results`` (of the figures ``names``) as a list, each figure drawn shown as a
    step as it comes (one with no data is none: that is known only once drawn)."""
    done: list[tuple[list[Path], list[str]]] = []

    def drawn() -> Iterator[str]:
        for name, result in zip(names, results):
            done.append(result)
            if result[0]:
                yield name
    for _ in track(drawn(), "figures", unit="figure", progress=progress, label=str):
        pass
    return done
