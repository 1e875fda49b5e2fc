"""Progress of long work, shown one way everywhere: the epochs of training, the steps of
an analysis (a layer, a split, a delta), the figures drawn after training, a plugin's loop.

    for layer in track(layers, "probes", unit="layer", progress=progress, label=str):
        fit(layer)

shows, while the loop runs, on stderr:

* when stderr is a terminal: a tqdm bar, ``probes cnn_s lr=0.1: 25%|██▌ | 3/12 [conv2]``;
* otherwise (CI logs, files): one line per finished step, never per batch,
  ``probes cnn_s lr=0.1: layer 3/12 conv2 (0.4 s)``;
* with ``progress=False`` (``--quiet``): nothing.

A loop of fine-grained items (``lines=False``: the batches of an epoch) has a bar on a
terminal and no lines. :func:`note` prints a line that stays (an epoch's summary), also
under the bars. The run being worked on (:func:`working_on`, set by whoever drives the
run) is named after the work of an outermost loop; nested loops say only what they do.

Under ``labkit run --jobs N`` each worker process relays its progress to the parent
(:func:`relayed`), whose :class:`Board` shows one line per worker updated in place when
stderr is a terminal, and otherwise each worker's lines as they come, prefixed
``[worker k]``.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, TypeVar

from tqdm import tqdm

T = TypeVar("T")
RELAY_SECONDS = 0.25
"""Least time between two relayed updates of a worker's bar (its lines all go)."""


@dataclass
class _Loop:
    """A loop being tracked: what :class:`Board` shows of it."""

    title: str
    unit: str
    total: int | None
    n: int = 0
    item: str = ""


_subject = ""  # the run being worked on
_open: list[_Loop] = []  # the loops being tracked in this process, outermost first
_relay: Callable[[tuple[Any, ...]], None] | None = None  # in a worker: to the parent
_relayed_at = 0.0


def _terminal() -> bool:
    return sys.stderr.isatty()


@contextmanager
def working_on(subject: str, default: bool = False) -> Iterator[None]:
    """Name the run being worked on (``cnn_s lr=0.1``) in the progress shown meanwhile.

    Args:
        default: name it only when no caller named it already (the engine's fallback:
            the run's directory name).
    """
    global _subject
    previous = _subject
    if not (default and previous):
        _subject = subject
    try:
        yield
    finally:
        _subject = previous


def subject() -> str:
    """The run being worked on, as :func:`working_on` named it ("" when none)."""
    return _subject


def track(items: Iterable[T], what: str, *, unit: str = "step", progress: bool = True,
          total: int | None = None, done: int = 0, label: Callable[[T], str] | None = None,
          lines: bool = True) -> Iterator[T]:
    """Yield ``items``, showing how far the loop over them has come (module docstring).

    Args:
        items: the work, one item per step.
        what: what the loop does (``"probes"``); an outermost loop adds the run.
        unit: what one item is, singular (``"layer"``).
        progress: show anything at all (``False`` under ``--quiet``).
        total: the number of steps; default ``len(items)`` when it has one.
        done: steps done before (a resumed run's epochs): the count starts there.
        label: an item's name, shown with it (a layer's name).
        lines: a finished step is worth a line where no bar can show (``False`` for
            batches).

    A step's time, in its line, runs from the end of the step before (or the start)
    to the moment the loop asks for the next item: the work on it, and for items that
    are results (of worker processes) the wait for them.
    """
    if not progress:
        yield from items
        return
    if total is None and isinstance(items, Sized):
        total = len(items)
    title = " ".join(part for part in (what, _subject if not _open else "") if part)
    loop = _Loop(title, unit, total, done)
    _open.append(loop)
    bar = tqdm(total=total, initial=done, desc=title, unit=unit, leave=lines,
               file=sys.stderr, dynamic_ncols=True) \
        if _relay is None and _terminal() else None
    try:
        _relay_status(force=True)
        started = time.perf_counter()
        for item in items:
            if label is not None:
                loop.item = label(item)
                if bar is not None:
                    bar.set_postfix_str(loop.item)
            yield item
            loop.n += 1
            now = time.perf_counter()
            if bar is not None:
                bar.update()
            elif lines:
                _line(step_line(loop, now - started), always=False)
            started = now
            _relay_status()
    finally:
        _open.remove(loop)
        if bar is not None:
            bar.close()
        _relay_status(force=True)


@contextmanager
def step(what: str, item: str, *, unit: str = "", progress: bool = True) -> Iterator[None]:
    """One step of work, shown as :func:`track` shows a loop of one ``item``."""
    steps = track([item], what, unit=unit, progress=progress, label=str)
    next(steps)
    try:
        yield
    except BaseException:
        steps.close()  # no line for a step that failed
        raise
    next(steps, None)


def step_line(loop: _Loop, seconds: float) -> str:
    """The line of a finished step: ``probes cnn_s lr=0.1: layer 3/12 conv2 (0.4 s)``."""
    count = "" if loop.total == 1 and loop.item else \
        f"{loop.n}/{loop.total}" if loop.total else f"{loop.n}"
    return " ".join(part for part in (f"{loop.title}:", loop.unit, count, loop.item) if part) \
        + f" ({seconds:.1f} s)"


def note(text: str, progress: bool = True) -> None:
    """A line that stays (an epoch's summary): printed above any bars; ``progress=False``:
    nothing."""
    if progress:
        _line(text, always=True)


def _line(text: str, always: bool) -> None:
    """``text`` where this process shows progress; a step's line (``always`` false) only
    where no bar shows it."""
    if _relay is not None:
        _relay(("line", text, always))
    elif not _terminal():
        print(text, file=sys.stderr, flush=True)
    elif always:
        tqdm.write(text, file=sys.stderr)


def _relay_status(force: bool = False) -> None:
    """Tell the parent where this worker stands (at most every :data:`RELAY_SECONDS`
    unless ``force``): the outer loops' positions, and the innermost loop as a bar."""
    global _relayed_at
    now = time.monotonic()
    if _relay is None or (not force and now - _relayed_at < RELAY_SECONDS):
        return
    _relayed_at = now
    if not _open:
        _relay(("status", _subject, 0, None, "", ""))
        return
    *outer, inner = _open
    text = " · ".join([f"{o.title} {o.unit} {o.n + 1}" + (f"/{o.total}" if o.total else "")
                       for o in outer] + [inner.title])
    _relay(("status", text, inner.n, inner.total, inner.unit, inner.item))


@contextmanager
def relayed(send: Callable[[tuple[Any, ...]], None]) -> Iterator[None]:
    """In a worker process: send all progress to the parent (``send`` one event at a
    time; the parent's :meth:`Board.show` shows it) instead of showing it here."""
    global _relay
    previous, _relay = _relay, send
    try:
        yield
    finally:
        _relay = previous


def relaying() -> bool:
    """Whether this process relays its progress to a parent (a ``--jobs`` worker)."""
    return _relay is not None


class Board:
    """What the parent of ``workers`` worker processes shows of their relayed progress:
    on a terminal one line per worker, updated in place, with the lines that stay printed
    above; otherwise each worker's lines as they come, prefixed ``[worker k]``; nothing
    when not ``enabled`` (``--quiet``). Worker ``k`` is the ``k``-th place running runs
    (a place takes the next run when its run ends).
    """

    def __init__(self, workers: int, enabled: bool = True):
        self.enabled = enabled
        self.terminal = enabled and _terminal()
        self.bars = [tqdm(total=None, position=i, leave=False, file=sys.stderr,
                          dynamic_ncols=True, bar_format="{desc}")
                     for i in range(workers)] if self.terminal else []

    def start(self, slot: int, subject: str) -> None:
        """Worker ``slot`` starts the run ``subject``."""
        self._draw(slot, f"{subject}: starting")

    def finish(self, slot: int) -> None:
        """Worker ``slot`` has ended its run."""
        self._draw(slot, "idle")

    def show(self, slot: int, event: tuple[Any, ...]) -> None:
        """Show an event worker ``slot`` relayed (:func:`relayed`)."""
        if not self.enabled:
            return
        if event[0] == "line":
            _, text, always = event
            if not self.terminal:
                print(f"[worker {slot + 1}] {text}", file=sys.stderr, flush=True)
            elif always:
                tqdm.write(f"[worker {slot + 1}] {text}", file=sys.stderr)
        elif event[0] == "status":
            self._draw(slot, *event[1:])

    def _draw(self, slot: int, text: str, n: int = 0, total: int | None = None,
              unit: str = "", item: str = "") -> None:
        if not self.terminal:
            return
        bar = self.bars[slot]
        bar.desc, bar.n, bar.total, bar.unit = f"[worker {slot + 1}] {text}", n, total, unit
        bar.postfix = item
        bar.bar_format = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit}"
                          if total else "{desc}: {n_fmt} {unit}" if unit else "{desc}") \
            + (" [{postfix}]" if item else "")
        bar.refresh()

    def paused(self) -> ContextManager[Any]:
        """Within it, other output (on stdout or stderr) is printed above the board."""
        return tqdm.external_write_mode(file=sys.stdout) if self.terminal else nullcontext()

    def close(self) -> None:
        """Remove the board's lines."""
        for bar in self.bars:
            bar.close()
