"""CLI commands of the saturation analyses (filled in by its issue)."""
import click

COMMANDS: list[click.Command] = []
