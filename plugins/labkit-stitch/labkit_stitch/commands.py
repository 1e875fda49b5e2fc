"""CLI commands of the plugin: ``labkit stitch-table``, ``labkit similarity`` and its alias
``labkit cka``."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import pandas as pd
from pydantic import ValidationError

from labkit.api import (INVALID, RunConfig, UserError, check_device, ensure_trained, latents,
                        load_runs, read_run, summarize, track, train, write_csv)
from labkit.api import registries as labkit_registries
from labkit_stitch.catalogue import CKA_MEASURES, MEASURES, choose
from labkit_stitch.direct import DirectMatch, direct_match_values
from labkit_stitch.provenance import TableRecord
from labkit_stitch.refs import NetworkRef, trained_network
from labkit_stitch.similarity import SimilarityOptions, layer_similarity, measure_columns
from labkit_stitch.stitching import Cell, CellChecker
from labkit_stitch.tables import (DIAGONAL_CHECKED, check_axes, diagonal_values, group_of,
                                  latest_table, matrix, mean_table, plot_similarity,
                                  plot_stitch_group, seed_keys, stitch_table, stitched_params,
                                  tables_folder, with_companions)


def parse_reduction(ctx: click.Context, param: click.Parameter, text: str) -> int | str:
    """``--reduction``: ``"none"`` or a positive integer d."""
    mode = latents.parse_mode(text)
    if mode == "pixelwise":
        raise UserError("--reduction pixelwise makes a row per position, not per image; "
                        "the similarity measures compare images: use 'none' or an integer d")
    return mode


def similarity_options(**values: object) -> SimilarityOptions:
    """:class:`SimilarityOptions` from command-line values, a bad value as a one-line
    error naming the option."""
    try:
        return SimilarityOptions(**values)
    except ValidationError as exc:
        option = {"measures": "measure"}
        raise UserError("; ".join(
            f"--{option.get(str(e['loc'][0]), str(e['loc'][0])).replace('_', '-')}: "
            f"{str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors())) from None


_REDUCTION = click.option(
    "--reduction", default="none", show_default=True, callback=parse_reduction,
    help="similarity of conv maps: 'none' flattens the whole map, d average-pools it to d×d "
         "first (stored latents of that downsampling are used when present)")
_MAX_SAMPLES = click.option("--max-samples", default=2048, show_default=True, type=int,
                            help="images every similarity measure sees (the first of the split)")
_PERMUTATIONS = click.option(
    "--permutations", default=0, show_default=True, type=int,
    help="permutation null per measure: shuffle B's images this many times (at least 2; 0: "
         "no null) and report null mean, sd, z and p")
_SEED = click.option("--seed", default=0, show_default=True, type=int,
                     help="seed of the permutations")
_MEASURE_HELP = (f"measure, repeatable, 'name' or 'name:key=value,...' (svcca:keep=20, "
                 f"mutual_knn:k=5); names: {', '.join(MEASURES)}")


def echo_matrices(rows: pd.DataFrame, values: list[str], row: str, column: str) -> None:
    """Print ``rows[value]`` as a ``row`` × ``column`` matrix for each of ``values``."""
    for value in values:
        click.echo(f"{value} (rows: {row}, columns: {column})")
        click.echo(matrix(rows, value, row, column).round(3).to_string())


def run_label(run: RunConfig) -> str:
    """``<model>-<hash>``: a run's short, unique name in file names."""
    return f"{run.config['model']['name']}-{run.hash}"


@click.command("stitch-table")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--run-id", required=True, help="run-id of the stitch runs")
@click.option("--device", default=None, help="torch device (cpu, cuda:0); overrides the spec")
@click.option("--split", default="eval", show_default=True, help="eval split the tables report")
@click.option("--metric", default="accuracy", show_default=True, help="metric the tables report")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="folder of the tables [default: <logs_dir>/stitch_tables/<spec name>/<run-id>]")
@click.option("--cka/--no-cka", default=True, show_default=True,
              help="also CKA between the chosen layers of each pair of networks")
@click.option("--measure", "measures", multiple=True, metavar="NAME",
              help=f"companion column of the stitching table (and of cka_table.csv): "
                   f"{_MEASURE_HELP}")
@click.option("--average-over", "average_over", multiple=True, metavar="KEY",
              help="dotted config key (or prefix) to average the tables over, repeatable "
                   "[default: every varying seed key: seed, model.sender.where.seed, ...]; "
                   "'none' for no mean table")
@click.option("--tolerance", default=0.01, show_default=True, type=click.FloatRange(min=0),
              help="a cell stitches when its stitched value is at least B's own value less "
                   "this (the latest-layer summary)")
@click.option("--direct-match/--no-direct-match", default=True, show_default=True,
              help="also the direct-matching stitch of every cell: fitted by least squares "
                   "on A's and B's activations (training split), not trained")
@click.option("--direct-ridge", default=DirectMatch.ridge, show_default=True,
              type=click.FloatRange(min=0),
              help="ridge of the direct-matching fit, relative to the mean variance of A's "
                   "features (0: the minimum-norm least-squares fit)")
@click.option("--diagonal-tolerance", default=0.0, show_default=True,
              type=click.FloatRange(min=0),
              help="a cell beats the diagonal when its value exceeds that of a matching-layer "
                   "cell of its row or column by more than this")
@click.option("--dry-run", is_flag=True,
              help="validate the spec and check every cell's cut and shapes; train nothing")
@_REDUCTION
@_MAX_SAMPLES
@_PERMUTATIONS
@_SEED
@click.option("--quiet", "-q", is_flag=True, help="show no progress: no bars, no progress lines")
def stitch_table_command(spec: str, run_id: str, device: str | None, split: str, metric: str,
                         output: str | None, cka: bool, measures: tuple[str, ...],
                         average_over: tuple[str, ...], tolerance: float, direct_match: bool,
                         direct_ridge: float, diagonal_tolerance: float, dry_run: bool,
                         reduction: int | str, max_samples: int, permutations: int, seed: int,
                         quiet: bool) -> None:
    """Train every stitch of SPEC (and the networks A and B first, where unfinished), then
    write the i × j tables of stitched accuracy, random-sender accuracy, their
    difference and the direct-matching stitch's accuracy (stitch_table.csv, one PNG per
    group; a column per --measure between A's and B's layers of the cell; between
    networks of one architecture, a flag on each cell rated more similar than a
    matching-layer cell of the diagonal), the latest layer of A that can stitch
    (stitch_latest.csv), the tables averaged over seeds (stitch_mean.csv), and CKA tables
    (cka_table.csv), each with a provenance record (<table>.provenance.json).

    Every cell is checked on the networks' architectures before anything trains: an
    unstitchable cell (a vector into a map, a cut across a skip connection) is not
    trained; the tables record why, and leave it blank."""
    runs = load_runs(spec, run_id, device)
    others = sorted({r.config["model"]["name"] for r in runs} - {"stitched"})
    if others:
        raise UserError(f"{spec}: stitch-table needs a spec whose model is 'stitched'; this one "
                        f"also trains {', '.join(others)} (train those with `labkit run`)")
    over = [] if list(average_over) == ["none"] else list(average_over) or seed_keys(runs)
    check_axes(runs, over)
    chosen = list(CKA_MEASURES) if cka else []
    chosen += [m for m in measures if m not in chosen]
    options = similarity_options(split=split, reduction=reduction, max_samples=max_samples,
                                 measures=chosen, permutations=permutations,
                                 seed=seed) if chosen else None
    checker = CellChecker()
    cells = {str(run.directory): checker(run) for run in runs}
    problems = {directory: cell.problem for directory, cell in cells.items()}
    if dry_run:
        echo_cells(runs, problems)
        click.echo(f"dry run: {len(runs)} stitch run(s) validated, "
                   f"{sum(p is not None for p in problems.values())} of unstitchable cells; "
                   f"nothing trained")
        return
    device = runs[0].config["device"]
    check_device(device)
    pairs = network_pairs(runs)
    for network in {str(r.directory): r for p in pairs for r in (p["a"], p["b"])}.values():
        ensure_trained(network, labkit_registries(), device, NetworkRef.noun, not quiet)
    states = []
    for i, run in enumerate(runs, 1):
        if problems[str(run.directory)]:
            click.echo(f"[{i}/{len(runs)}] unstitchable, not trained: {run.directory}",
                       err=quiet)
            continue
        try:
            states.append(train(run, labkit_registries(), device, progress=not quiet))
        except UserError as exc:  # found only now: this cell stays empty, the grid goes on
            click.echo(f"error: {run.directory}: {exc}", err=True)
            states.append(INVALID)
        click.echo(f"[{i}/{len(runs)}] {states[-1]}: {run.directory}", err=quiet)

    out = Path(output) if output else tables_folder(runs)
    given = {"spec": str(Path(spec).resolve()), "run_id": run_id}
    similarities: list[pd.DataFrame] = []
    if cka:
        similarities = write_cka_tables(pairs, options, device, out, given, progress=not quiet)
    elif measures:
        similarities = [pair_similarity(pair, options, device)
                        for pair in track(pairs, "similarity", unit="pair", label=pair_label,
                                          progress=not quiet)]
    companions, stitch_given = None, given
    if measures:
        columns = [column for m in measures for column in measure_columns(choose(m), permutations)]
        companions = pd.concat(similarities, ignore_index=True)[COMPANION_KEYS + columns]
        stitch_given = {**given, "measures": list(measures), "permutations": permutations,
                        "seed": seed}
    write_stitch_tables(runs, split, metric, out, stitch_given, cells, over, tolerance,
                        companions,
                        DirectMatch(direct_ridge, device=device) if direct_match else None,
                        diagonal_tolerance)
    summarize(states)


COMPANION_KEYS = ["run_a", "run_b", "layer_a", "layer_b"]


def pair_label(pair: dict) -> str:
    """``A-to-B``: the pair's networks by their labels."""
    return f"{run_label(pair['a'])}-to-{run_label(pair['b'])}"


def pair_similarity(pair: dict, options: SimilarityOptions, device: str) -> pd.DataFrame:
    """:func:`~labkit_stitch.similarity.layer_similarity` of one pair of networks."""
    return layer_similarity(pair["a"], pair["layers_a"], pair["b"], pair["layers_b"],
                            pair["dataset"], options, device)


# labkit's state of a run that hit a mistake in the input (summarize's exit code 2)
def echo_cells(runs: list[RunConfig], problems: dict[str, str | None]) -> None:
    """Print each stitch run's cell and whether it can be stitched."""
    rows = []
    for run in runs:
        params = stitched_params(run)
        rows.append({"sender_layer": params.sender_layer,
                     "receiver_layer": params.receiver_layer,
                     "sender_weights": params.sender_weights,
                     "cell": problems[str(run.directory)] or "stitchable"})
    with pd.option_context("display.max_colwidth", 120, "display.width", 250):
        click.echo(pd.DataFrame(rows).to_string(index=False))


def network_pairs(runs: list[RunConfig]) -> list[dict]:
    """Each distinct pair of networks (A, B) of the stitch runs, with the layers chosen of
    each (in grid order) and the data set of its first stitch run."""
    pairs: dict[tuple[str, str], dict] = {}
    for run in runs:
        params = stitched_params(run)
        a, b = params.sender.run_config(), params.receiver.run_config()
        pair = pairs.setdefault((str(a.directory), str(b.directory)), {
            "a": a, "b": b, "layers_a": [], "layers_b": [], "dataset": run.config["dataset"]})
        for key, layer in (("layers_a", params.sender_layer), ("layers_b", params.receiver_layer)):
            if layer not in pair[key]:
                pair[key].append(layer)
    return list(pairs.values())


def write_stitch_tables(runs: list[RunConfig], split: str, metric: str, out: Path,
                        parameters: dict[str, Any] | None = None,
                        cells: dict[str, Cell] | None = None, over: Sequence[str] = (),
                        tolerance: float = 0.01, companions: pd.DataFrame | None = None,
                        direct: DirectMatch | None = None, diagonal_tolerance: float = 0.0
                        ) -> None:
    """The stitching tables into ``out``, then their provenance record
    stitch_table.provenance.json (see :mod:`labkit_stitch.provenance`: the stitch runs
    and their networks A and B); the tables on stdout.

    Files: stitch_table.csv and one heatmap per group (stitch_<group>.png),
    stitch_latest.csv (:func:`~labkit_stitch.tables.latest_table`), and when ``over``
    names axes, stitch_mean.csv (:func:`~labkit_stitch.tables.mean_table`), one heatmap
    per averaged group (stitch_mean_<group>.png) and stitch_mean_latest.csv.

    Args:
        parameters: further parameters to record (the command's spec and run-id).
        cells: per stitch run directory, its :class:`~labkit_stitch.stitching.Cell`
            (checked here when not given).
        over: dotted config keys to average over.
        tolerance: of the latest-layer summary.
        companions: similarity columns to add to stitch_table.csv, one row per pair of
            networks and layers: ``run_a``, ``run_b``, ``layer_a``, ``layer_b`` (A's and
            B's run directories and layers), then the columns to add
            (:func:`~labkit_stitch.tables.with_companions`).
        direct: how to fit and score the direct-matching stitches
            (:mod:`labkit_stitch.direct`; needs A and B trained); ``None``: the column
            ``direct_match`` stays empty.
        diagonal_tolerance: of the flags on cells that beat the diagonal
            (:func:`~labkit_stitch.tables.beats_diagonal`).
    """
    networks = [network.run_config() for params in map(stitched_params, runs)
                for network in (params.sender, params.receiver)]
    record = TableRecord(out / "stitch_table.csv", "stitch-table",
                         {**(parameters or {}), "split": split, "metric": metric,
                          "average_over": list(over), "tolerance": tolerance,
                          "direct_match": None if direct is None else asdict(direct),
                          "diagonal_tolerance": diagonal_tolerance},
                         [*runs, *networks])
    if cells is None:
        checker = CellChecker()
        cells = {str(run.directory): checker(run) for run in runs}
    problems = {directory: cell.problem for directory, cell in cells.items()}
    values = (None if direct is None
              else direct_match_values(runs, problems, split, metric, direct))
    table = stitch_table(runs, split, metric, problems, values, diagonal_tolerance)
    if companions is not None:
        table = with_companions(table, companions)
    depths = sender_depths(runs, cells, over)
    files = _write_cell_tables(table, depths, tolerance, out, f"{split} {metric}")
    if over:
        files += _write_mean_tables(mean_table(runs, table, over, diagonal_tolerance), depths,
                                    tolerance, out, f"{split} {metric}", over)
    record.write(files)
    click.echo(f"\nstitching tables -> {files[0]}")


def sender_depths(runs: list[RunConfig], cells: dict[str, Cell],
                  over: Sequence[str]) -> dict[tuple[str, str], int]:
    """``(group, sender layer)`` → the layer's depth in A, for the groups of the cells
    and of their means over ``over`` (what the latest-layer summaries order by)."""
    depths: dict[tuple[str, str], int] = {}
    for run in runs:
        params = stitched_params(run)
        for group in (group_of(run, params), group_of(run, params, over)):
            depths[(group, params.sender_layer)] = cells[str(run.directory)].sender_depth
    return depths


def _write_cell_tables(table: pd.DataFrame, depths: dict[tuple[str, str], int],
                       tolerance: float, out: Path, measured: str) -> list[Path]:
    """stitch_table.csv, stitch_latest.csv and a heatmap per group, each group's
    matrices on stdout; the files written."""
    files = [out / "stitch_table.csv", out / "stitch_latest.csv"]
    write_csv(files[0], table)
    latest = latest_table(table, depths, tolerance)
    write_csv(files[1], latest)
    for group, rows in table.groupby("group", sort=False):
        files.append(out / f"stitch_{group}.png")
        plot_stitch_group(rows, files[-1])
        click.echo(f"\n== {group}: {measured}; A {rows['sender_run'].iloc[0]} "
                   f"({rows['sender'].iloc[0]:.3f}), B {rows['receiver_run'].iloc[0]} "
                   f"({rows['receiver'].iloc[0]:.3f})")
        echo_matrices(rows, ["stitched", "random_sender", "debiased", "penalty",
                             "direct_match"], "sender_layer", "receiver_layer")
        echo_beaten_diagonal(rows, DIAGONAL_CHECKED)
    echo_unstitchable(table)
    echo_latest(latest, "latest layer of A that can stitch")
    return files


def _write_mean_tables(means: pd.DataFrame, depths: dict[tuple[str, str], int],
                       tolerance: float, out: Path, measured: str,
                       over: Sequence[str]) -> list[Path]:
    """stitch_mean.csv, stitch_mean_latest.csv and a heatmap per averaged group, each
    group's matrices on stdout; the files written."""
    files = [out / "stitch_mean.csv", out / "stitch_mean_latest.csv"]
    write_csv(files[0], means)
    mean_latest = latest_table(means, depths, tolerance, mean=True)
    write_csv(files[1], mean_latest)
    for group, rows in means.groupby("group", sort=False):
        files.append(out / f"stitch_mean_{group}.png")
        plot_stitch_group(rows, files[-1], mean=True)
        click.echo(f"\n== {group}: {measured}, mean over {', '.join(over)} "
                   f"(n = {rows['stitched_n'].max()})")
        echo_matrices(rows, ["stitched_mean", "stitched_std", "debiased_mean",
                             "direct_match_mean"], "sender_layer", "receiver_layer")
        echo_beaten_diagonal(rows, [f"{value}_mean" for value in DIAGONAL_CHECKED])
    echo_latest(mean_latest, f"latest layer of A that can stitch, mean over {', '.join(over)}")
    return files


def echo_beaten_diagonal(rows: pd.DataFrame, columns: Sequence[str]) -> None:
    """Print, for one group whose A and B have matching layers, every cell flagged in
    ``<column>_beats_diagonal`` with the diagonal values it beats."""
    if not rows["matching_layers"].any():
        return
    lines = []
    for column in columns:
        diagonal = diagonal_values(rows, column)
        for index, row in rows[rows[f"{column}_beats_diagonal"]].iterrows():
            beaten = [f"{value:.3f} at ({layer}, {layer})"
                      for value, layer in ((diagonal.at[index, "row"], row["sender_layer"]),
                                           (diagonal.at[index, "column"], row["receiver_layer"]))
                      if pd.notna(value)]
            lines.append(f"  {column}: {row['sender_layer']} -> {row['receiver_layer']} "
                         f"{row[column]:.3f}; diagonal {', '.join(beaten)}")
    click.echo(f"beats the diagonal (a matching-layer cell of its row or column): "
               f"{len(lines)} cell(s)")
    for line in lines:
        click.echo(line)


def echo_unstitchable(table: pd.DataFrame) -> None:
    """Print the unstitchable cells and why."""
    bad = table[table["unstitchable"].notna()]
    if len(bad):
        click.echo(f"\n{len(bad)} unstitchable cell(s), left empty:")
        for _, row in bad.iterrows():
            click.echo(f"  {row['group']}: {row['sender_layer']} -> {row['receiver_layer']}: "
                       f"{row['unstitchable']}")


def echo_latest(latest: pd.DataFrame, title: str) -> None:
    """Print a :func:`~labkit_stitch.tables.latest_table`."""
    click.echo(f"\n{title} (stitched ≥ B's own − {latest['tolerance'].iloc[0]}):")
    columns = ["group", "baseline", "latest_sender_layer", "receiver_layer", "stitched",
               "stitching_cells", "cells"]
    click.echo(latest[columns].round(3).to_string(index=False))


def pair_record(pair: dict, rows: pd.DataFrame) -> dict[str, Any]:
    """What one pair's similarity rows were computed from, for the provenance record: the
    runs, layers and data set, and per side the source and the latents manifest digest."""
    first = rows.iloc[0]
    return {"run_a": str(pair["a"].directory), "run_b": str(pair["b"].directory),
            "layers_a": list(rows["layer_a"].unique()),
            "layers_b": list(rows["layer_b"].unique()), "dataset": pair["dataset"],
            **{f"{key}_{side}": (None if pd.isna(first[f"{key}_{side}"])
                                 else first[f"{key}_{side}"])
               for side in ("a", "b") for key in ("source", "latents")}}


def measure_parameters(options: SimilarityOptions) -> dict[str, Any]:
    """The options as recorded in provenance, each measure with all its parameters."""
    return {**options.model_dump(exclude={"measures"}),
            "measures": {c.column: c.params for c in options.choices()}}


def echo_similarities(rows: pd.DataFrame, options: SimilarityOptions) -> None:
    """Print each measure's layer × layer matrix (and its z-scores with a null)."""
    columns = [c.column for c in options.choices()]
    if options.permutations:
        columns = [name for column in columns for name in (column, f"{column}_z")]
    echo_matrices(rows, columns, "layer_a", "layer_b")


def write_cka_tables(pairs: list[dict], options: SimilarityOptions, device: str, out: Path,
                     parameters: dict[str, Any] | None = None,
                     progress: bool = False) -> list[pd.DataFrame]:
    """cka_table.csv and one heatmap per pair of networks into ``out``, then their
    provenance record cka_table.provenance.json (see :mod:`labkit_stitch.provenance`);
    tables on stdout.

    Args:
        pairs: ``{"a", "b", "layers_a", "layers_b", "dataset"}`` per pair of networks.
        parameters: further parameters to record (the command's spec and run-id).
        progress: show each pair as it is done (``labkit.api.track``).

    Returns:
        Each pair's rows (:func:`~labkit_stitch.similarity.layer_similarity`).
    """
    record = TableRecord(out / "cka_table.csv", "stitch-table",
                         {**(parameters or {}), **measure_parameters(options),
                          "device": device},
                         [run for pair in pairs for run in (pair["a"], pair["b"])])
    tables, files, computed = [], [out / "cka_table.csv"], []
    for pair in track(pairs, "CKA", unit="pair", label=pair_label, progress=progress):
        rows = pair_similarity(pair, options, device)
        title = pair_label(pair)
        files.append(out / f"cka_{title}.png")
        plot_similarity(rows, options.choices(), f"CKA {title}", files[-1])
        click.echo(f"\n== CKA {title} ({options.split}, {rows['samples'].iloc[0]} images)")
        echo_similarities(rows, options)
        tables.append(rows)
        computed.append(pair_record(pair, rows))
    write_csv(files[0], pd.concat(tables, ignore_index=True))
    record.write(files, pairs=computed)
    click.echo(f"\nCKA tables -> {files[0]}")
    return tables


def pair_options(command: Callable) -> Callable:
    """The options of ``labkit similarity`` and ``labkit cka``."""
    options = [
        click.argument("run_a", type=click.Path(exists=True, file_okay=False)),
        click.argument("run_b", type=click.Path(exists=True, file_okay=False)),
        click.option("--layers-a", default=None,
                     help="comma-separated layers of A [default: its top-level modules]"),
        click.option("--layers-b", default=None,
                     help="comma-separated layers of B [default: its top-level modules]"),
        click.option("--split", default="eval", show_default=True,
                     help="eval split of A's data set; both networks see its images"),
        click.option("--measure", "measures", multiple=True, metavar="NAME",
                     help=f"{_MEASURE_HELP} [default: the five CKAs]"),
        _PERMUTATIONS, _SEED, _REDUCTION, _MAX_SAMPLES,
        click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
                     help=f"folder of the table and its heatmaps [default: "
                          f"RUN_A/{command.__name__.removesuffix('_command')}/<B model>-<B hash>]"),
        click.option("--device", default="cpu", show_default=True, help="torch device"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def compare_runs(command: str, run_a: str, run_b: str, layers_a: str | None,
                 layers_b: str | None, output: str | None, device: str,
                 **values: Any) -> None:
    """``labkit similarity`` (files similarity_table.csv, similarity.png) and ``labkit
    cka`` (cka_table.csv, cka.png), each with its provenance record, in
    ``RUN_A/<command>/<B label>`` unless ``output``."""
    check_device(device)
    # each folder itself, checked to hold a trained run (its final checkpoint verified)
    a, b = (read_run(folder, name).run for folder, name in ((run_a, "RUN_A"), (run_b, "RUN_B")))

    def layers(text: str | None, run: RunConfig) -> list[str]:
        if text:
            return [part.strip() for part in text.split(",") if part.strip()]
        return [name for name, _ in trained_network(run).named_children()]

    options = similarity_options(**{**values, "measures": list(values["measures"])
                                    or list(CKA_MEASURES)})
    pair = {"a": a, "b": b, "layers_a": layers(layers_a, a), "layers_b": layers(layers_b, b),
            "dataset": a.config["dataset"]}
    out = Path(output or a.directory / command / run_label(b))
    stem = "cka" if command == "cka" else "similarity"
    table, figure = out / f"{stem}_table.csv", out / f"{stem}.png"
    record = TableRecord(table, command,
                         {"run_a": str(a.directory), "run_b": str(b.directory),
                          "layers_a": pair["layers_a"], "layers_b": pair["layers_b"],
                          **measure_parameters(options), "device": device}, [a, b])
    rows = pair_similarity(pair, options, device)
    write_csv(table, rows)
    plot_similarity(rows, options.choices(), f"{run_label(a)} vs {run_label(b)}", figure)
    record.write([table, figure], pairs=[pair_record(pair, rows)])
    echo_similarities(rows, options)
    click.echo(f"-> {table}")


@click.command("similarity")
@pair_options
def similarity_command(**values: Any) -> None:
    """Similarity measures between the layers of two trained runs (directories), one
    layer × layer table per measure: similarity_table.csv (a column per measure, and its
    permutation null with --permutations), similarity.png and their provenance record
    similarity_table.provenance.json. Measures and their invariances: the plugin's
    README."""
    compare_runs("similarity", **values)


@click.command("cka")
@pair_options
def cka_command(**values: Any) -> None:
    """`labkit similarity` under its former name, the five CKAs by default: cka_table.csv,
    cka.png and their provenance record cka_table.provenance.json."""
    compare_runs("cka", **values)


COMMANDS: list[click.Command] = [stitch_table_command, similarity_command, cka_command]
