"""Command modules beyond the core ones in :mod:`labkit.cli`; each exposes ``COMMANDS``."""
