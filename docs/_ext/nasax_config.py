"""The `nasax-config` directive: the config reference, generated from the pydantic schema.

```{nasax-config} search
```

renders one table of the `search` section: every key (nested sections as dotted keys),
its type and bounds, its default and its description, read from the models at build time.
The argument is a section of `nasax.core.config.Config` (`top` for its own scalars), a
registered strategy's section (`search.darts`, from the schema it registered), or
`model.space` (a space defined as a mapping). When the build ends, a section or strategy
that no directive rendered, and a key without a description, is a warning, so a
`sphinx-build -W` fails on a schema the pages no longer cover.
"""

from __future__ import annotations

import inspect
import json
import types
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from docutils import nodes
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

TOP = "top"
"""The argument that renders the config's own scalars (`name`, `seed`)."""


def _config() -> type[BaseModel]:
    from nasax.core.config import Config

    return Config


def _strategies() -> dict[str, type[BaseModel]]:
    """Every registered strategy's options schema, built-ins included (imports them)."""
    from nasax.search.strategy import STRATEGIES

    return {name: STRATEGIES.get(name).options for name in STRATEGIES.names()}


def _space_definition() -> type[BaseModel]:
    from nasax.supernet.spaces import SpaceDefinition

    return SpaceDefinition


def required_sections() -> list[str]:
    """Every argument the pages must render for the reference to be complete."""
    config = _config()
    sections = [TOP]
    for name, field in config.model_fields.items():
        if _section_model(field.annotation) is not None:
            sections.append(name)
    sections.append("model.space")
    sections += [f"search.{name}" for name in _strategies()]
    return sections


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a section field (`X` or `X | None`), else None."""
    candidates = get_args(annotation) if _is_union(annotation) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _model_of(section: str) -> type[BaseModel]:
    """The schema a directive argument names; ValueError if it names none."""
    config = _config()
    if section == TOP:
        return config
    if section == "model.space":
        return _space_definition()
    if section.startswith("search.") and section.count(".") == 1:
        strategies = _strategies()
        name = section.split(".", 1)[1]
        if name in strategies:
            return strategies[name]
    field = config.model_fields.get(section)
    model = _section_model(field.annotation) if field is not None else None
    if model is None:
        raise ValueError(
            f"{section!r} is no config section; use {TOP}, a section of Config, model.space "
            "or search.<strategy>"
        )
    return model


def type_text(annotation: Any) -> str:
    """A config key's type as a reader writes it in YAML (`null` for None)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if _is_union(annotation):
        return " | ".join(type_text(a) for a in args)
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(type_text(a) for a in args) + "]"
    if origin is dict:
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)


def bounds_text(field: FieldInfo) -> str:
    """The field's numeric bounds and length limits, e.g. `≥ 0, < 1`."""
    parts = []
    for item in field.metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(item, kind):
                parts.append(f"{sign} {getattr(item, attribute)}")
        if isinstance(item, annotated_types.MinLen):
            parts.append(f"at least {item.min_length} long")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matches {pattern}")
    return ", ".join(parts)


def value_text(value: Any) -> str:
    """A default as YAML writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return repr(value)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else value_text(value)
    return value_text(field.default)


def first_paragraph(text: str | None) -> str:
    """A docstring's first paragraph on one line."""
    if not text:
        return ""
    return " ".join(inspect.cleandoc(text).split("\n\n", 1)[0].split())


class Row:
    """One key of a section's table."""

    def __init__(self, key: str, type_: str, default: str, description: str) -> None:
        self.key, self.type, self.default, self.description = key, type_, default, description


def section_rows(model: type[BaseModel], prefix: str) -> list[Row]:
    """The rows of `model`'s keys under `prefix`, nested sections as dotted keys after a
    row for the section itself; a key without a description has an empty one."""
    rows = []
    for name, field in model.model_fields.items():
        if field.exclude:  # kept raw for another layer (search.<strategy>): its own table
            continue
        key = f"{prefix}.{name}" if prefix else name
        nested = _section_model(field.annotation)
        description = field.description or ""
        type_ = type_text(field.annotation)
        bounds = bounds_text(field)
        if bounds:
            type_ = f"{type_} ({bounds})"
        if nested is not None:
            description = description or first_paragraph(nested.__doc__)
            rows.append(Row(key, type_, default_text(field), description))
            rows += section_rows(nested, key)
            continue
        rows.append(Row(key, type_, default_text(field), description))
        if get_origin(field.annotation) is dict:
            value_model = _section_model(get_args(field.annotation)[1])
            if value_model is not None:
                rows += section_rows(value_model, f"{key}.<key>")
    return rows


class ConfigReference(SphinxDirective):
    """`{nasax-config} SECTION`: the table of one config section (see the module)."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        section = self.arguments[0]
        try:
            model = _model_of(section)
        except ValueError as e:
            logger.warning(str(e), location=self.get_location())
            return []
        rendered = _rendered(self.env)
        rendered.setdefault(self.env.docname, set()).add(section)
        if section == TOP:
            rows = [
                row
                for row in section_rows(model, "")
                if _section_model(model.model_fields[row.key.split(".")[0]].annotation) is None
            ]
            intro = ""
        else:
            rows = section_rows(model, section)
            intro = first_paragraph(model.__doc__)
        for row in rows:
            if not row.description:
                logger.warning(
                    f"config key {row.key} has no description: give it "
                    "Field(description=...) in its schema",
                    location=self.get_location(),
                )
        result: list[nodes.Node] = []
        if intro:
            result += self.parse_text_to_nodes(intro)
        result.append(self._table(rows))
        return result

    def _table(self, rows: list[Row]) -> nodes.table:
        table = nodes.table(classes=["nasax-config"])
        group = nodes.tgroup(cols=4)
        table += group
        for width in (26, 18, 12, 44):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row(["key", "type", "default", "description"], code=False)
        body = nodes.tbody()
        group += body
        for row in rows:
            body += self._row([row.key, row.type, row.default, row.description], code=True)
        return table

    def _row(self, cells: list[str], code: bool) -> nodes.row:
        row = nodes.row()
        for index, text in enumerate(cells):
            entry = nodes.entry()
            paragraph = nodes.paragraph()
            if code and index in (0, 2) and text and text != "required":
                paragraph += nodes.literal(text=text)
            elif code and index == 3:
                inline, _messages = self.parse_inline(text)
                paragraph += inline
            else:
                paragraph += nodes.Text(text)
            entry += paragraph
            row += entry
        return row


def _rendered(env: Any) -> dict[str, set[str]]:
    """Page -> the sections its directives rendered, kept in the build environment."""
    if not hasattr(env, "nasax_config_rendered"):
        env.nasax_config_rendered = {}
    return env.nasax_config_rendered


def check_complete(app: Sphinx, env: Any) -> None:
    """Warns of every section the pages' directives left out."""
    rendered = set().union(*_rendered(env).values())
    for section in required_sections():
        if section not in rendered:
            logger.warning(
                f"the config reference does not render {section!r}: add "
                f"```{{nasax-config}} {section}``` to a page"
            )


def purge_rendered(app: Sphinx, env: Any, docname: str) -> None:
    """A page read again renders its sections again."""
    _rendered(env).pop(docname, None)


def merge_rendered(app: Sphinx, env: Any, docnames: set[str], other: Any) -> None:
    """Parallel builds: the sections each process's pages rendered."""
    for docname in docnames:
        if docname in _rendered(other):
            _rendered(env)[docname] = _rendered(other)[docname]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("nasax-config", ConfigReference)
    app.connect("env-check-consistency", check_complete)
    app.connect("env-purge-doc", purge_rendered)
    app.connect("env-merge-info", merge_rendered)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
