"""MkDocs hook: the pages that the code already states, generated at every build.

Written nowhere else, so never stale (a build cannot show an old version of them, so no
test or CI step compares a stored copy):

* ``reference/cli.md``: every ``labkit`` command (plugins' included) from its click
  definition: usage, help text, options with types and defaults;
* ``reference/spec.md``: every spec key from the pydantic schema (``labkit schema``):
  type, bounds, default, description, and the nested objects under the key using them;
* ``reference/components.md``: every registered model, data set, optimizer, schedule,
  metric, method, analysis and logger of labkit and its first-party plugins, with what
  its docstring says and each parameter's type, default and description (a parameter
  model's ``Field(description=…)``, else the factory docstring's ``Args:`` entry);
* ``changelog.md`` (the repository's CHANGELOG.md), ``plugins/index.md``
  (plugins/README.md) and ``plugins/<name>/…`` (each first-party plugin's README and its
  ``docs/`` folder).

Every page's relative links are rewritten to where their target is published: a file of
the site becomes a link to its page, any other file of the repository its path in code
type, so the same Markdown reads right on GitHub and in the site.

Run by ``mkdocs build`` (``mkdocs.yml`` names this file under ``hooks``); it imports
labkit and its plugins, so build the site from the project's environment.
"""
from __future__ import annotations

import importlib.metadata as md
import inspect
import json
import os
import posixpath
import re
from pathlib import Path
from typing import Any

import click
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PLUGINS = ROOT / "plugins"

# site path -> repository file of every generated page copied from the repository
_ORIGINS: dict[str, Path] = {}


def on_startup(**_: Any) -> None:
    _load_first_party_plugins_only()


def on_files(files: Files, config: Any) -> Files:
    for path, content in generated_pages().items():
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    origin = _ORIGINS.get(page.file.src_uri, DOCS / page.file.src_uri)
    return relink(markdown, origin, page.file.src_uri)


def generated_pages() -> dict[str, str | bytes]:
    """Site path → content of every generated page and the files they show."""
    pages: dict[str, str | bytes] = {
        "reference/cli.md": cli_reference(),
        "reference/spec.md": spec_reference(),
        "reference/components.md": components_reference(),
    }
    copied = [ROOT / "CHANGELOG.md", PLUGINS / "README.md"]
    for folder in sorted(PLUGINS.glob("labkit-*/")):
        copied += [folder / "README.md", *sorted(p for p in (folder / "docs").rglob("*") if p.is_file())]
    for source in copied:
        site = site_path(source)
        if site is None or not source.is_file():
            continue
        _ORIGINS[site] = source
        pages[site] = source.read_text() if source.suffix == ".md" else source.read_bytes()
    return pages


def _load_first_party_plugins_only() -> None:
    """Document labkit and its first-party plugins, whatever else is installed: load
    only the entry points that the packages under ``plugins/`` declare."""
    ours = {folder.name for folder in PLUGINS.glob("labkit-*/")}
    names = sorted(ep.name for ep in md.entry_points(group="labkit")
                   if ep.dist is not None and ep.dist.name in ours)
    os.environ["LABKIT_PLUGINS"] = ",".join(names)
    os.environ.pop("LABKIT_DISABLE_PLUGIN_AUTOLOAD", None)


# --- where a repository file is published, and links rewritten to it


def site_path(file: Path) -> str | None:
    """The site path a repository file is published under; None: not in the site."""
    try:
        rel = file.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return None
    if rel.startswith("docs/") and not rel.startswith("docs/hooks/"):
        return rel.removeprefix("docs/")
    if rel == "README.md":  # the site's home page says what the README says first
        return "index.md"
    if rel == "CHANGELOG.md":
        return "changelog.md"
    if rel == "plugins/README.md":
        return "plugins/index.md"
    plugin = re.fullmatch(r"plugins/labkit-([^/]+)/(README\.md|docs/.+)", rel)
    if plugin:
        return f"plugins/{plugin[1]}/" + ("index.md" if plugin[2] == "README.md" else plugin[2])
    return None


_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def relink(text: str, origin: Path, page: str) -> str:
    """``text`` (the Markdown of repository file ``origin``, shown as site page ``page``)
    with every relative link to a repository file pointed at its page in the site, or
    turned into the file's repository path in code type when the site has no page for it.
    Links to files that do not exist are left for MkDocs to report; code blocks are left
    alone."""
    def one(match: re.Match) -> str:
        bang, label, target = match.groups()
        path, hash_, anchor = target.partition("#")
        if not path or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", path) or path.startswith("/"):
            return match.group(0)
        file = (origin.parent / path).resolve()
        if file.is_dir() and (file / "README.md").is_file():
            file = file / "README.md"
        if not file.exists() or ROOT not in file.parents:
            return match.group(0)
        site = site_path(file)
        if site is None:
            shown = file.relative_to(ROOT).as_posix()
            return label if label.strip("`") == shown else f"{label} (`{shown}`)"
        new = posixpath.relpath(site, posixpath.dirname(page) or ".")
        return f"{bang}[{label}]({new}{hash_}{anchor})"

    lines, fenced = [], False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        lines.append(line if fenced else _LINK.sub(one, line))
    return "".join(lines)


# --- the command line


def cli_reference() -> str:
    from labkit.cli import cli, declared_commands
    from labkit.cli.commands.plugin_commands import hook_commands

    ctx = click.Context(cli, info_name="labkit")
    listed = cli.list_commands(ctx)
    hooked = hook_commands(set(listed) - set(declared_commands()), declared_commands())
    lines = ["# Command-line reference", "",
             "Generated from the commands' own definitions (`labkit COMMAND --help` prints "
             "the same). Exit codes: 0 done, 1 some run or analysis failed (the others "
             "still ran), 2 a mistake in the input (one line on stderr, no traceback).", ""]
    names = [*listed, *sorted(set(hooked) - set(listed))]
    lines += [" · ".join(f"[`{name}`](#labkit-{name})" for name in names), ""]
    for name in names:
        command = hooked.get(name) or cli.get_command(ctx, name)
        if command is None:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        lines += [f"## `labkit {name}`", "", "```text", command.get_usage(sub).strip(), "```",
                  "", _plain(command.help or command.short_help or ""), ""]
        rows = [_option_row(p, sub) for p in command.get_params(sub)
                if isinstance(p, click.Option) and p.name != "help" and not p.hidden]
        if rows:
            lines += ["| option | default | meaning |", "|---|---|---|", *rows, ""]
    return "\n".join(lines)


def _option_row(option: click.Option, ctx: click.Context) -> str:
    flags = ", ".join(f"`{o}`" for o in [*option.opts, *option.secondary_opts])
    if not option.is_flag and not option.count:
        flags += f" `{option.make_metavar(ctx) if _takes_ctx(option) else option.make_metavar()}`"
    if option.multiple:
        flags += " (repeatable)"
    default = option.get_default(ctx, call=False)
    if option.required:
        shown = "required"
    elif default in (None, (), [], False) or callable(default) or type(default).__name__ == "Sentinel":
        shown = ""  # click ≥ 8.3 marks "no default" with a sentinel
    else:
        shown = f"`{default}`"
    return f"| {flags} | {shown} | {_cell(option.help or '')} |"


def _takes_ctx(option: click.Option) -> bool:
    """Whether this click's ``make_metavar`` takes a context (click ≥ 8.2)."""
    return "ctx" in inspect.signature(option.make_metavar).parameters


# --- the spec


def spec_reference() -> str:
    from labkit.spec import json_schema

    schema = json_schema()
    defs = schema.get("$defs", {})
    homes = _object_homes(schema, defs)
    lines = ["# Spec reference", "",
             "Generated from the spec's schema (`labkit schema` prints it as JSON Schema for "
             "editors). Every key is optional except `model`. A JSON list where one value is "
             "expected is a grid axis ([Specs and grids](../guide/specs.md)); a component is a "
             "name or `{\"name\": …, params}`, its parameters listed in "
             "[Components](components.md). \"Identity\" says whether a key is part of the "
             "run's hash ([Runs and files](../guide/runs.md#run-identity)).", "",
             "| key | type | default |", "|---|---|---|"]
    fields = schema["properties"]
    lines += [f"| [`{name}`](#{name}) | {_type(field, defs, homes)} | {_default_json(field)} |"
              for name, field in fields.items()]
    lines.append("")
    for name, field in fields.items():
        lines += [f"## `{name}` {{ #{name} }}", "",
                  f"{_type(field, defs, homes)} · default {_default_json(field)}", "",
                  _cell(field.get("description", "")), ""]
        for ref in _refs(field):
            if homes.get(ref) == name and "properties" in defs[ref]:
                lines += _object_table(ref, defs, homes)
    return "\n".join(lines) + "\n"


def _object_homes(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, str]:
    """Object definition → the first top-level key whose section describes it."""
    homes: dict[str, str] = {}
    for name, field in schema["properties"].items():
        for ref in _refs(field):
            homes.setdefault(ref, name)
    return homes


def _refs(node: Any) -> list[str]:
    """Names of the definitions ``node`` refers to, in order, each once."""
    found: list[str] = []
    if isinstance(node, dict):
        if "$ref" in node:
            found.append(node["$ref"].rsplit("/", 1)[-1])
        for value in node.values():
            found += _refs(value)
    elif isinstance(node, list):
        for value in node:
            found += _refs(value)
    return list(dict.fromkeys(found))


def _object_table(ref: str, defs: dict[str, Any], homes: dict[str, str],
                  anchor: str | None = None, level: str = "###") -> list[str]:
    definition = defs[ref]
    lines = [f"{level} {ref} {{ #{anchor or _anchor(ref)} }}", "",
             _markdown(definition.get("description", "")), "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{key}` | {_type(field, defs, homes)} | {_default_json(field)} | "
              f"{_cell(field.get('description', ''))} |"
              for key, field in definition["properties"].items()]
    return lines + [""]


def _anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")


def _default_json(field: dict[str, Any]) -> str:
    return f"`{json.dumps(field['default'], ensure_ascii=False)}`" if "default" in field else "required"


def _type(field: dict[str, Any], defs: dict[str, Any], linked: Any) -> str:
    """A short type text: bounds, enumerations, links to the nested objects in
    ``linked`` and, for components, to their kind in the components reference. A key's
    grid-axis alternative (a list of its values) is left out."""
    options = field.get("anyOf") or field.get("oneOf") or [field]
    if len(options) == 2 and options[1].get("type") == "array" and options[1].get("items") == options[0]:
        options = [options[0]]
    texts = [_one_type(option, defs, linked) for option in options]
    return " \\| ".join(dict.fromkeys(t for t in texts if t)) or "any"


def _one_type(node: dict[str, Any], defs: dict[str, Any], linked: Any) -> str:
    registry = node.get("registry")
    if registry:
        inner = {k: v for k, v in node.items() if k != "registry"}
        kind = f"[{registry}](components.md#{registry})"
        if inner.get("type") == "array":
            return f"list of {kind}"
        return " \\| ".join(f"component ({kind})" if t == "component" else t
                            for t in _type(inner, defs, linked).split(" \\| "))
    if "anyOf" in node or "oneOf" in node:
        return _type(node, defs, linked)
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name == "Component":
            return "component"
        return f"[{name}](#{_anchor(name)})" if name in linked else name
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if node.get("type") == "array":
        items = node.get("items")
        return f"list of {_one_type(items, defs, linked)}" if items else "list"
    if "type" in node:
        return str(node["type"]) + _bounds(node)
    return ""


def _bounds(node: dict[str, Any]) -> str:
    marks = [("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
             ("exclusiveMaximum", "<")]
    found = [f"{sign} {node[key]:g}" if isinstance(node[key], float) else f"{sign} {node[key]}"
             for key, sign in marks if key in node]
    return f" ({', '.join(found)})" if found else ""


# --- registered components


def components_reference() -> str:
    from labkit.cli.plugins import registries

    every = registries()
    lines = ["# Components", "",
             "Every name a spec can use, generated from the registries of labkit and its "
             "first-party plugins (`labkit list KIND [PATTERN]` prints the same for what is "
             "installed). A component is a name or `{\"name\": …, params}`; parameters are "
             "checked when the spec is validated (`labkit plan`), and a list given for a "
             "parameter is a grid axis.", "",
             " · ".join(f"[{kind}](#{kind})" for kind in every._all), ""]
    for kind, registry in every._all.items():
        context = ", ".join(f"`{c}`" for c in registry.context if c not in ("params", "run", "context"))
        lines += [f"## {kind} {{ #{kind} }}", ""]
        if context:
            lines += [f"labkit passes {context} itself; the parameters below are the spec's.", ""]
        groups = _groups(registry.entries())
        lines += ["| name | plugin | what it is |", "|---|---|---|"]
        for group in groups:
            first = group[0]
            link = f"#{_component_anchor(kind, first.name)}"
            names = ", ".join(f"[`{_shown_name(e)}`]({link})" for e in group)
            lines.append(f"| {names} | {first.plugin} | {_cell(_group_summary(group))} |")
        lines.append("")
        for group in groups:
            lines += _component_section(kind, group)
    return "\n".join(lines)


def _groups(entries: list[Any]) -> list[list[Any]]:
    """Entries sharing plugin, parameters and docstring (digits aside), in name order."""
    groups: dict[tuple, list[Any]] = {}
    for entry in entries:
        schema = _untitled(entry.params.model_json_schema())  # titles carry the name
        key = (entry.plugin, json.dumps(schema, sort_keys=True, default=str),
               re.sub(r"\d+", "#", _summary(entry.obj)))
        groups.setdefault(key, []).append(entry)
    return list(groups.values())


def _group_summary(group: list[Any]) -> str:
    """The first paragraph of the group's docstrings; where they differ in their numbers
    only, the numbers shown as N."""
    summaries = {_summary(e.obj).split("\n\n")[0] for e in group}
    first = _summary(group[0].obj).split("\n\n")[0]
    return first if len(summaries) == 1 else re.sub(r"\d+", "N", first)


def _untitled(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _untitled(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


def _shown_name(entry: Any) -> str:
    return entry.name + ("<torchvision name>" if entry.prefix else "")


def _component_anchor(kind: str, name: str) -> str:
    return f"{kind}-{_anchor(name)}"


def _component_section(kind: str, group: list[Any]) -> list[str]:
    first = group[0]
    names = ", ".join(f"`{_shown_name(e)}`" for e in group)
    title = names if len(group) <= 3 else f"`{_shown_name(first)}` and {len(group) - 1} more"
    lines = [f"### {title} {{ #{_component_anchor(kind, first.name)} }}", ""]
    lines += [f"{names}; plugin: {first.plugin}." if len(group) > 3 else f"Plugin: {first.plugin}.", ""]
    summaries = [_summary(e.obj) for e in group]
    if len(set(summaries)) == 1:
        lines += [summaries[0], ""]
    else:
        lines += ["| name | what it is |", "|---|---|"]
        lines += [f"| `{e.name}` | {_cell(s)} |" for e, s in zip(group, summaries)]
        lines.append("")
    schema = first.params.model_json_schema()
    fields = schema.get("properties", {})
    if not fields:
        return lines + ["No parameters.", ""]
    defs = schema.get("$defs", {})
    anchors = {name: f"{_component_anchor(kind, first.name)}-{_anchor(name)}" for name in defs}
    args = _docstring_args(first.obj)
    lines += ["| parameter | type | default | meaning |", "|---|---|---|---|"]
    for key, field in fields.items():
        text = field.get("description") or args.get(key, "")
        lines.append(f"| `{key}` | {_type(field, defs, anchors)} | "
                     f"{_default_json(field)} | {_cell(text)} |")
    lines.append("")
    for name in _refs(schema):
        if "properties" in defs.get(name, {}):
            lines += _object_table(name, defs, anchors, anchors[name], level="####")
    return [_relinked_types(line, anchors) for line in lines]


def _relinked_types(line: str, anchors: dict[str, str]) -> str:
    """A component's nested objects are anchored under the component, not by name."""
    for name, anchor in anchors.items():
        line = line.replace(f"(#{_anchor(name)})", f"(#{anchor})")
    return line


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Attributes|Yields|"
                      r"Example|Examples|Note|Notes):\s*$")


def _summary(obj: Any) -> str:
    """The docstring's text before its first section (``Args:``, ``Returns:`` …), as
    Markdown."""
    doc = inspect.getdoc(obj) or ""
    kept = []
    for line in doc.splitlines():
        if _SECTION.match(line.strip()):
            break
        kept.append(line)
    return _markdown("\n".join(kept).strip())


def _docstring_args(obj: Any) -> dict[str, str]:
    """``name → description`` from the docstring's ``Args:`` section (Google style; an
    entry ``a, b: …`` describes both)."""
    target = obj if inspect.isfunction(obj) or not inspect.isclass(obj) else obj.__init__
    found: dict[str, str] = {}
    for doc in (inspect.getdoc(obj) or "", inspect.getdoc(target) or ""):
        section, names, indent = False, [], None
        for line in doc.splitlines():
            stripped = line.strip()
            if _SECTION.match(stripped):
                section = stripped.split(":")[0] in ("Args", "Arguments", "Parameters")
                names, indent = [], None
                continue
            if not section or not stripped:
                continue
            depth = len(line) - len(line.lstrip())
            entry = re.match(r"^([\w, ]+?)\s*(\([^)]*\))?:\s*(.*)$", stripped)
            if entry and (indent is None or depth <= indent):
                indent = depth
                names = [n.strip() for n in entry[1].split(",")]
                for name in names:
                    found.setdefault(name, entry[3])
            elif names and indent is not None and depth > indent:
                for name in names:
                    found[name] = f"{found[name]} {stripped}"
            else:
                section = False
    return {name: _markdown(text) for name, text in found.items()}


# --- text helpers


def _markdown(text: str) -> str:
    """reStructuredText bits of docstrings as Markdown: ``x`` and :role:`x` as code."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _plain(text: str) -> str:
    """click's help text as Markdown: its ``\\b`` no-rewrap markers removed, dedented."""
    return inspect.cleandoc(text.replace("\b\n", ""))


def _cell(text: str) -> str:
    """``text`` on one line, fit for a table cell: pipes and, outside code, asterisks
    escaped, and every ``docs/<page>.md`` it names a link to that page (from a page of
    ``reference/``)."""
    parts = " ".join(text.split()).split("`")
    for i in range(0, len(parts), 2):  # outside code spans (a pipe inside one splits no cell)
        escaped = parts[i].replace("|", "\\|").replace("*", "\\*")
        parts[i] = re.sub(r"\bdocs/([\w/-]+\.md)\b", r"[\1](../\1)", escaped)
    return "`".join(parts)
