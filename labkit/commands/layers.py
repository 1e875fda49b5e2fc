"""CLI commands of the layers analyses (filled in by its issue)."""
import click

COMMANDS: list[click.Command] = []
