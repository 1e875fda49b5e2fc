"""CLI commands of the plugin: ``labkit stitch-table`` and ``labkit cka``."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pandas as pd
from pydantic import ValidationError

from labkit.api import (INVALID, RunConfig, UserError, check_device, latents, load_runs,
                        read_run, registries as labkit_registries, summarize, train, write_csv)
from labkit_stitch.provenance import TableRecord
from labkit_stitch.refs import ensure_trained, trained_network
from labkit_stitch.similarity import CKAOptions, layer_cka
from labkit_stitch.stitching import Cell, CellChecker
from labkit_stitch.tables import (CKA_MEASURES, check_axes, group_of, latest_table, matrix,
                                  mean_table, plot_cka, plot_stitch_group, seed_keys,
                                  stitch_table, stitched_params)


def parse_reduction(ctx: click.Context, param: click.Parameter, text: str) -> int | str:
    """``--reduction``: ``"none"`` or a positive integer d."""
    mode = latents.parse_mode(text)
    if mode == "pixelwise":
        raise UserError("--reduction pixelwise makes a row per position, not per image; "
                        "CKA compares images: use 'none' or an integer d")
    return mode


def cka_options(**values: object) -> CKAOptions:
    """:class:`CKAOptions` from command-line values, a bad value as a one-line error."""
    try:
        return CKAOptions(**values)
    except ValidationError as exc:
        raise UserError("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: "
                                  f"{e['msg']}" for e in exc.errors())) from None


_REDUCTION = click.option(
    "--reduction", default="none", show_default=True, callback=parse_reduction,
    help="CKA on conv maps: 'none' flattens the whole map, d average-pools it to d×d first "
         "(stored latents of that downsampling are used when present)")
_MAX_SAMPLES = click.option("--max-samples", default=2048, show_default=True, type=int,
                            help="images for linear and RBF CKA (minibatch CKA uses the split)")


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
@click.option("--average-over", "average_over", multiple=True, metavar="KEY",
              help="dotted config key (or prefix) to average the tables over, repeatable "
                   "[default: every varying seed key: seed, model.sender.where.seed, ...]; "
                   "'none' for no mean table")
@click.option("--tolerance", default=0.01, show_default=True, type=click.FloatRange(min=0),
              help="a cell stitches when its stitched value is at least B's own value less "
                   "this (the latest-layer summary)")
@click.option("--dry-run", is_flag=True,
              help="validate the spec and check every cell's cut and shapes; train nothing")
@_REDUCTION
@_MAX_SAMPLES
@click.option("--quiet", "-q", is_flag=True, help="no progress bars")
def stitch_table_command(spec: str, run_id: str, device: str | None, split: str, metric: str,
                         output: str | None, cka: bool, average_over: tuple[str, ...],
                         tolerance: float, dry_run: bool, reduction: int | str,
                         max_samples: int, quiet: bool) -> None:
    """Train every stitch of SPEC (and the networks A and B first, where unfinished), then
    write the i × j tables of stitched accuracy, random-sender accuracy and their
    difference (stitch_table.csv, one PNG per group), the latest layer of A that can
    stitch (stitch_latest.csv), the tables averaged over seeds (stitch_mean.csv), and CKA
    tables (cka_table.csv), each with a provenance record (<table>.provenance.json).

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
        ensure_trained(network, device, progress=not quiet)
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

    out = Path(output or Path(runs[0].config["logs_dir"]) / "stitch_tables"
               / runs[0].config["name"] / run_id)
    given = {"spec": str(Path(spec).resolve()), "run_id": run_id}
    write_stitch_tables(runs, split, metric, out, given, cells, over, tolerance)
    if cka:
        options = cka_options(split=split, reduction=reduction, max_samples=max_samples)
        write_cka_tables(pairs, options, device, out, given)
    summarize(states)


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
                        tolerance: float = 0.01) -> None:
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
    """
    networks = [network.run_config() for params in map(stitched_params, runs)
                for network in (params.sender, params.receiver)]
    record = TableRecord(out / "stitch_table.csv", "stitch-table",
                         {**(parameters or {}), "split": split, "metric": metric,
                          "average_over": list(over), "tolerance": tolerance},
                         [*runs, *networks])
    if cells is None:
        checker = CellChecker()
        cells = {str(run.directory): checker(run) for run in runs}
    table = stitch_table(runs, split, metric,
                         {directory: cell.problem for directory, cell in cells.items()})
    depths: dict[tuple[str, str], int] = {}
    for run in runs:
        params = stitched_params(run)
        for group in (group_of(run, params), group_of(run, params, over)):
            depths[(group, params.sender_layer)] = cells[str(run.directory)].sender_depth
    files = [out / "stitch_table.csv", out / "stitch_latest.csv"]
    write_csv(files[0], table)
    latest = latest_table(table, depths, tolerance)
    write_csv(files[1], latest)
    for group, rows in table.groupby("group", sort=False):
        files.append(out / f"stitch_{group}.png")
        plot_stitch_group(rows, files[-1])
        click.echo(f"\n== {group}: {split} {metric}; A {rows['sender_run'].iloc[0]} "
                   f"({rows['sender'].iloc[0]:.3f}), B {rows['receiver_run'].iloc[0]} "
                   f"({rows['receiver'].iloc[0]:.3f})")
        echo_matrices(rows, ["stitched", "random_sender", "debiased", "penalty"],
                      "sender_layer", "receiver_layer")
    echo_unstitchable(table)
    echo_latest(latest, "latest layer of A that can stitch")
    if over:
        means = mean_table(runs, table, over)
        files += [out / "stitch_mean.csv", out / "stitch_mean_latest.csv"]
        write_csv(out / "stitch_mean.csv", means)
        mean_latest = latest_table(means, depths, tolerance, mean=True)
        write_csv(out / "stitch_mean_latest.csv", mean_latest)
        for group, rows in means.groupby("group", sort=False):
            files.append(out / f"stitch_mean_{group}.png")
            plot_stitch_group(rows, files[-1], mean=True)
            click.echo(f"\n== {group}: {split} {metric}, mean over {', '.join(over)} "
                       f"(n = {rows['stitched_n'].max()})")
            echo_matrices(rows, ["stitched_mean", "stitched_std", "debiased_mean"],
                          "sender_layer", "receiver_layer")
        echo_latest(mean_latest, f"latest layer of A that can stitch, mean over "
                                 f"{', '.join(over)}")
    record.write(files)
    click.echo(f"\nstitching tables -> {files[0]}")


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


def cka_pair_record(pair: dict, rows: pd.DataFrame) -> dict[str, Any]:
    """What one pair's CKA rows were computed from, for the provenance record: the runs,
    layers and data set, and per side the source and the latents manifest digest."""
    first = rows.iloc[0]
    return {"run_a": str(pair["a"].directory), "run_b": str(pair["b"].directory),
            "layers_a": list(rows["layer_a"].unique()),
            "layers_b": list(rows["layer_b"].unique()), "dataset": pair["dataset"],
            **{f"{key}_{side}": (None if pd.isna(first[f"{key}_{side}"])
                                 else first[f"{key}_{side}"])
               for side in ("a", "b") for key in ("source", "latents")}}


def write_cka_tables(pairs: list[dict], options: CKAOptions, device: str, out: Path,
                     parameters: dict[str, Any] | None = None) -> None:
    """cka_table.csv and one heatmap per pair of networks into ``out``, then their
    provenance record cka_table.provenance.json (see :mod:`labkit_stitch.provenance`);
    tables on stdout.

    Args:
        pairs: ``{"a", "b", "layers_a", "layers_b", "dataset"}`` per pair of networks.
        parameters: further parameters to record (the command's spec and run-id).
    """
    record = TableRecord(out / "cka_table.csv", "stitch-table",
                         {**(parameters or {}), **options.model_dump(), "device": device},
                         [run for pair in pairs for run in (pair["a"], pair["b"])])
    tables, files, computed = [], [out / "cka_table.csv"], []
    for pair in pairs:
        rows = layer_cka(pair["a"], pair["layers_a"], pair["b"], pair["layers_b"],
                         pair["dataset"], options, device)
        title = f"{run_label(pair['a'])}-to-{run_label(pair['b'])}"
        files.append(out / f"cka_{title}.png")
        plot_cka(rows, f"CKA {title}", files[-1])
        click.echo(f"\n== CKA {title} ({options.split}, {rows['samples'].iloc[0]} images)")
        echo_matrices(rows, list(CKA_MEASURES), "layer_a", "layer_b")
        tables.append(rows)
        computed.append(cka_pair_record(pair, rows))
    write_csv(files[0], pd.concat(tables, ignore_index=True))
    record.write(files, pairs=computed)
    click.echo(f"\nCKA tables -> {files[0]}")


@click.command("cka")
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@click.option("--layers-a", default=None,
              help="comma-separated layers of A [default: its top-level modules]")
@click.option("--layers-b", default=None,
              help="comma-separated layers of B [default: its top-level modules]")
@click.option("--split", default="eval", show_default=True,
              help="eval split of A's data set; both networks see its images")
@_REDUCTION
@_MAX_SAMPLES
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="folder of cka_table.csv and cka.png [default: RUN_A/cka/<B model>-<B hash>]")
@click.option("--device", default="cpu", show_default=True, help="torch device")
def cka_command(run_a: str, run_b: str, layers_a: str | None, layers_b: str | None, split: str,
                reduction: int | str, max_samples: int, output: str | None, device: str) -> None:
    """Linear, RBF and minibatch CKA between the layers of two trained runs (their folders,
    wherever they lie): cka_table.csv, cka.png and their provenance record
    cka_table.provenance.json."""
    check_device(device)
    # each folder itself, checked to hold a trained run (its final checkpoint verified)
    a, b = (read_run(folder, name).run for folder, name in ((run_a, "RUN_A"), (run_b, "RUN_B")))

    def layers(text: str | None, run: RunConfig) -> list[str]:
        if text:
            return [part.strip() for part in text.split(",") if part.strip()]
        return [name for name, _ in trained_network(run).named_children()]

    options = cka_options(split=split, reduction=reduction, max_samples=max_samples)
    pair = {"a": a, "b": b, "layers_a": layers(layers_a, a), "layers_b": layers(layers_b, b),
            "dataset": a.config["dataset"]}
    out = Path(output or a.directory / "cka" / run_label(b))
    record = TableRecord(out / "cka_table.csv", "cka",
                         {"run_a": str(a.directory), "run_b": str(b.directory),
                          "layers_a": pair["layers_a"], "layers_b": pair["layers_b"],
                          **options.model_dump(), "device": device}, [a, b])
    rows = layer_cka(a, pair["layers_a"], b, pair["layers_b"], pair["dataset"], options, device)
    write_csv(out / "cka_table.csv", rows)
    plot_cka(rows, f"CKA {run_label(a)} vs {run_label(b)}", out / "cka.png")
    record.write([out / "cka_table.csv", out / "cka.png"], pairs=[cka_pair_record(pair, rows)])
    echo_matrices(rows, list(CKA_MEASURES), "layer_a", "layer_b")
    click.echo(f"-> {out / 'cka_table.csv'}")


COMMANDS: list[click.Command] = [stitch_table_command, cka_command]
