"""MkDocs hook: the pages that the code already states, generated at every build.

Written nowhere else, so never stale:

* ``reference/cli.md``: every ``labkit`` command (plugins' included) from its click
  definition: usage, help text, options with types and defaults;
* ``reference/spec.md``: every spec field from the pydantic schema (``labkit schema``):
  type, default, description, and the nested objects;
* ``reference/components.md``: every registered model, data set, optimizer, schedule,
  metric, method, analysis and logger with its parameters and defaults (``labkit list``);
* ``plugins/<name>.md`` (and the files its README links to): each first-party plugin's
  README; ``changelog.md``: the repository's CHANGELOG.md.

Run by ``mkdocs build`` (``mkdocs.yml`` names this file under ``hooks``); it imports
labkit and its plugins, so build the site from the project's environment.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"


def on_files(files: Files, config: Any) -> Files:
    for path, content in generated_pages().items():
        files.append(File.generated(config, path, content=content))
    return files


def generated_pages() -> dict[str, str | bytes]:
    """Site path → content of every generated page and the files plugin pages link to."""
    pages: dict[str, str | bytes] = {
        "reference/cli.md": cli_reference(),
        "reference/spec.md": spec_reference(),
        "reference/components.md": components_reference(),
        "changelog.md": (ROOT / "CHANGELOG.md").read_text(),
    }
    for readme in sorted(PLUGINS.glob("labkit-*/README.md")):
        pages.update(plugin_pages(readme.parent))
    return pages


# --- the command line


def cli_reference() -> str:
    from labkit.cli import cli

    ctx = click.Context(cli, info_name="labkit")
    lines = ["# Command-line reference", "",
             "Generated from the commands' own definitions (`labkit COMMAND --help` prints "
             "the same). Exit codes: 0 done, 1 some run or analysis failed (the others "
             "still ran), 2 a mistake in the input (one line on stderr, no traceback).", ""]
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        if command is None:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        lines += [f"## `labkit {name}`", "", "```text", command.get_usage(sub).strip(), "```",
                  "", _plain(command.help or command.short_help or ""), ""]
        rows = [_option_row(p, sub) for p in command.get_params(sub)
                if isinstance(p, click.Option) and p.name != "help"]
        if rows:
            lines += ["| option | default | meaning |", "|---|---|---|", *rows, ""]
    return "\n".join(lines)


def _option_row(option: click.Option, ctx: click.Context) -> str:
    flags = ", ".join(f"`{o}`" for o in [*option.opts, *option.secondary_opts])
    if not option.is_flag and not option.count:
        flags += f" `{option.make_metavar(ctx) if _takes_ctx(option) else option.make_metavar()}`"
    if option.multiple:
        flags += " (repeatable)"
    default = option.default
    shown = "" if default in (None, (), []) or callable(default) else f"`{default}`"
    return f"| {flags} | {shown} | {_cell(option.help or '')} |"


def _takes_ctx(option: click.Option) -> bool:
    """Whether this click's ``make_metavar`` takes a context (click ≥ 8.2)."""
    import inspect
    return "ctx" in inspect.signature(option.make_metavar).parameters


# --- the spec


def spec_reference() -> str:
    from labkit.spec import json_schema

    schema = json_schema()
    defs = schema.get("$defs", {})
    lines = ["# Spec reference", "",
             "Generated from the spec's schema (`labkit schema` prints it as JSON Schema for "
             "editors). Every key is optional except `model`. A JSON list where one value is "
             "expected is a grid axis; see [Specs and grids](../guide/specs.md).", "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [_field_row(name, field, defs) for name, field in schema["properties"].items()]
    for name, definition in sorted(defs.items()):
        if "properties" not in definition:
            continue
        lines += ["", f"## `{name}`", "", _plain(definition.get("description", "")), "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [_field_row(key, field, defs) for key, field in definition["properties"].items()]
    return "\n".join(lines) + "\n"


def _field_row(name: str, field: dict[str, Any], defs: dict[str, Any]) -> str:
    default = f"`{json.dumps(field['default'])}`" if "default" in field else "required"
    return f"| `{name}` | {_type(field, defs)} | {default} | {_cell(field.get('description', ''))} |"


def _type(field: dict[str, Any], defs: dict[str, Any]) -> str:
    """A short type text; a field's grid-axis alternative (a list of it) is left out."""
    options = field.get("anyOf", [field])
    if len(options) == 2 and options[1].get("type") == "array" and options[1].get("items") == options[0]:
        options = [options[0]]
    texts = []
    for option in options:
        for inner in option.get("anyOf", [option]):
            if "$ref" in inner:
                name = inner["$ref"].rsplit("/", 1)[-1]
                texts.append(f"[{name}](#{name.lower()})" if "properties" in defs.get(name, {})
                             else "component" if name == "Component" else name)
            elif "enum" in inner:
                texts.append(" \\| ".join(f"`{json.dumps(v)}`" for v in inner["enum"]))
            elif "const" in inner:
                texts.append(f"`{json.dumps(inner['const'])}`")
            elif inner.get("type") == "array":
                texts.append("list")
            elif "type" in inner:
                texts.append(str(inner["type"]))
    return " \\| ".join(dict.fromkeys(texts)) or "any"


# --- registered components


def components_reference() -> str:
    from labkit.plugins import registries

    lines = ["# Components", "",
             "Every name a spec can use, generated from the registries of labkit and its "
             "first-party plugins (`labkit list KIND [PATTERN]` prints the same for what is "
             "installed). A component is a name or `{\"name\": …, params}`; parameters are "
             "checked when the spec is validated.", ""]
    for registry in registries():
        lines += [f"## {registry.kind}", "", "| name | plugin | parameters (defaults) |",
                  "|---|---|---|"]
        for entry in registry.entries():
            name = entry.name + ("<torchvision name>" if entry.prefix else "")
            params = ", ".join(f"`{key}={_default(field)}`"
                               for key, field in entry.params.model_fields.items())
            lines.append(f"| `{name}` | {entry.plugin} | {params or '—'} |")
        lines.append("")
    return "\n".join(lines)


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    try:
        return json.dumps(default)
    except TypeError:
        return str(default)


# --- plugin READMEs


def plugin_pages(folder: Path) -> dict[str, str | bytes]:
    """The plugin's README as ``plugins/<short name>/index.md`` and its ``docs/`` folder
    beside it, so links inside the plugin keep working; a link to anything outside the
    plugin becomes the file's repository path."""
    short = folder.name.removeprefix("labkit-")
    sources = [folder / "README.md", *sorted(p for p in (folder / "docs").rglob("*") if p.is_file())]
    pages: dict[str, str | bytes] = {}
    for source in sources:
        relative = "index.md" if source.name == "README.md" and source.parent == folder \
            else source.relative_to(folder).as_posix()
        pages[f"plugins/{short}/{relative}"] = (
            _inside_links(source.read_text(), source.parent, folder) if source.suffix == ".md"
            else source.read_bytes())
    return pages


def _inside_links(text: str, here: Path, folder: Path) -> str:
    """``text`` with every relative link that leaves ``folder`` turned into plain text."""
    def relink(match: re.Match) -> str:
        label, target = match.group(2), match.group(3)
        path = target.partition("#")[0]
        if not path or re.match(r"^[a-z]+:", path):
            return match.group(0)
        source = (here / path).resolve()
        if folder in source.parents and source.exists():
            return match.group(0).replace(path, "index.md", 1) if source.name == "README.md" \
                and source.parent == folder else match.group(0)
        shown = source.relative_to(ROOT).as_posix() if ROOT in source.parents else path
        return f"{label} (`{shown}`)"
    return re.sub(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", relink, text)


# --- text helpers


def _plain(text: str) -> str:
    """click's help text as Markdown: its ``\\b`` no-rewrap markers removed."""
    return text.replace("\b\n", "").strip()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
