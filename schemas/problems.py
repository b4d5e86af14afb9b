"""How a problem with input becomes one line: the only pydantic-error formatters and the only YAML loader.

- :func:`first_problem`: the first problem of a JSON document (a signal, a
  notification record) as ``field: message (+N more)``, for ``line N: ...``
  on stderr. On the replay hot path; its wording is the signal contract's.
- :func:`validation_problems`: every problem of a YAML-configured model (a
  rule, a channel, the site registry, a rule test file) as ``(field, message)``.
- :class:`StrictYamlLoader`: the YAML loader of every configuration file.

Every file and command names a mistake in these words, so a user learns them once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from schemas.excerpt import clip, excerpt
from schemas.integers import MAX_SAFE_INTEGER

MAX_YAML_DEPTH = 64
"""Nesting levels a YAML document may have (a rule needs about seven)."""
MAX_ALIAS_NODES = 10_000
"""Nodes that alias uses may add to one YAML stream, each alias counted at the size of what it refers to."""
MAX_YAML_NODES = 100_000
"""Nodes one YAML stream may hold (a rule is about 40; a 1 MiB file of tiny scalars would be ~500,000, slow to compose)."""
_MAX_INT_DIGITS = 64
"""Significant characters beyond which an integer literal is out of range in any base (2^53 needs 53 binary digits)."""


class StrictYamlLoader(yaml.SafeLoader):
    """The safe loader, refusing duplicate keys and input that would cost unbounded time or memory.

    A second ``kind:`` silently winning would hide a mistake. Aliases share
    nodes, so a few hundred bytes can describe a value of billions of nodes
    (an "alias bomb") that validation or an error message would then walk;
    each alias use is therefore counted at the expanded size of what it refers
    to, and refused past :data:`MAX_ALIAS_NODES` (an alias inside its own
    anchor, a cycle, is refused too). Nesting deeper than :data:`MAX_YAML_DEPTH`
    (aliases counted at their expanded depth) is refused before Python's
    recursion limit is near, and integers outside ±(2^53 − 1) (the signal
    contract's range) before a thousands-digit literal is converted. Each refusal is a ``yaml.YAMLError``
    with the position, like any syntax error.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._alias_nodes = 0
        self._nodes = 0
        self._shapes: dict[int, tuple[int, int]] = {}  # id(node) → (expanded size, expanded height), this document

    def compose_document(self) -> yaml.Node | None:
        """Anchors are per document; so are the shapes (node ids of a finished document may be reused)."""
        self._shapes.clear()
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """PyYAML's composition, counting each node's expanded size and height before anything is constructed."""
        event = self.peek_event()
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is None:
                raise yaml.composer.ComposerError(None, None, f"found undefined alias {excerpt(event.anchor)}", mark)
            if id(node) not in self._shapes:
                raise yaml.composer.ComposerError(None, None, f"alias {excerpt(event.anchor)} is inside its own anchor", mark)
            size, height = self._shapes[id(node)]
            self._alias_nodes += size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise yaml.composer.ComposerError(None, None, f"aliases expand to more than {MAX_ALIAS_NODES} nodes", mark)
            if self._depth + height > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            self.get_event()
            return node
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_NODES} nodes", mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        children: list[yaml.Node] = node.value if isinstance(node, yaml.SequenceNode) else []
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        shapes = [self._shapes[id(child)] for child in children]
        self._shapes[id(node)] = (1 + sum(size for size, _ in shapes), 1 + max((height for _, height in shapes), default=0))
        return node


def _construct_mapping(loader: StrictYamlLoader, node: yaml.Node) -> dict[Any, Any]:
    if not isinstance(node, yaml.MappingNode):  # `!!map [a]`
        found = getattr(node, "id", "another node")
        raise yaml.constructor.ConstructorError(None, None, f"expected a mapping node, but found {found}", node.start_mark)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults` may be overridden by explicit keys
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # unhashable: construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {excerpt(key)}", key_node.start_mark)
    return loader.construct_mapping(node, deep=True)


def _construct_int(loader: StrictYamlLoader, node: yaml.ScalarNode) -> int:
    text = str(node.value).replace("_", "")
    significant = text.lstrip("+-")
    significant = significant[2:] if significant[:2] in ("0x", "0b", "0o") else significant
    value = None if len(significant.lstrip("0")) > _MAX_INT_DIGITS else loader.construct_yaml_int(node)
    if value is None or abs(value) > MAX_SAFE_INTEGER:
        raise yaml.constructor.ConstructorError(None, None, f"integer {clip(text)} is outside ±(2^53 − 1)", node.start_mark)
    return value


def _checked(construct: Callable[[StrictYamlLoader, yaml.ScalarNode], Any]) -> Callable[[StrictYamlLoader, yaml.ScalarNode], Any]:
    """A scalar constructor whose failures are YAML errors: PyYAML's raise ValueError/KeyError on `!!int abc`, `!!bool maybe`..."""

    def construct_checked(loader: StrictYamlLoader, node: yaml.ScalarNode) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, KeyError, AttributeError):
            name = str(node.tag).rpartition(":")[2]
            raise yaml.constructor.ConstructorError(
                None, None, f"{excerpt(node.value)} is not a valid !!{name}", node.start_mark,
            ) from None

    return construct_checked


StrictYamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
StrictYamlLoader.add_constructor("tag:yaml.org,2002:int", _checked(_construct_int))
for _tag, _construct in (
    ("float", yaml.constructor.SafeConstructor.construct_yaml_float),
    ("bool", yaml.constructor.SafeConstructor.construct_yaml_bool),
    ("timestamp", yaml.constructor.SafeConstructor.construct_yaml_timestamp),
):
    StrictYamlLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _checked(_construct))


class FieldProblems(ValueError):
    """Mistakes a model validator found in named fields of its model: ``(field, message)`` pairs.

    A cross-field check runs on the whole block, so pydantic places its error
    at the block; :func:`validation_problems` reads the pairs to name each field instead.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in problems))
        self.problems = problems


MAX_PATH = 80
"""Characters of a field path a one-line reason shows at most (a JSON key can be as long as its document)."""


def _path(parts: list[str]) -> str:
    return clip(".".join(parts), MAX_PATH)


def first_problem(error: ValidationError, tagged: bool = False, pattern_words: Mapping[str, Callable[[Any], str]] | None = None) -> str:
    """One readable line for the first problem of a JSON document, plus how many more there are.

    ``tagged``: the model is the signal union, tagged by ``type``; pydantic then
    puts the tag first in every location, which the path leaves out.
    ``pattern_words``: for a regular expression, how to say in words what is wrong
    with the input that did not match it (``ts``'s pattern is 150 characters).
    """
    problems = error.errors(include_url=False)
    first = problems[0]
    kind = first["type"]
    if kind == "json_invalid":
        return f"not valid JSON: {first['ctx'].get('error', first['msg'])}" if "ctx" in first else "not valid JSON"
    loc = [str(part) for part in first["loc"]]
    skip = 1 if tagged else 0
    if kind == "union_tag_invalid":  # the unions of signals (a signal, a notification's evidence) are tagged by `type`
        reason = f"{_path([*loc, 'type'])}: unknown signal type {first['ctx']['tag']!r}"
    elif kind == "union_tag_not_found":
        reason = f"{_path([*loc, 'type'])}: field required"
    elif len(loc) <= skip and kind in ("model_type", "model_attributes_type", "dict_type"):
        reason = "not a JSON object"
    elif kind in ("model_type", "model_attributes_type"):
        reason = f"{_path(loc[skip:])}: must be an object"
    else:
        path = _path(loc[skip:] if len(loc) > skip else loc)
        words = (pattern_words or {}).get(first.get("ctx", {}).get("pattern", "")) if kind == "string_pattern_mismatch" else None
        message = words(first["input"]) if words is not None else {
            "extra_forbidden": "field not allowed",
            "missing": "field required",
        }.get(kind, first["msg"][0].lower() + first["msg"][1:])
        reason = f"{path}: {message}"
    if len(problems) > 1:
        reason += f" (+{len(problems) - 1} more)"
    return reason


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown field",
}


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind in ("less_than_equal", "less_than", "greater_than", "greater_than_equal"):
        sign = {"less_than_equal": "≤", "less_than": "<", "greater_than": ">", "greater_than_equal": "≥"}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {sign} {bound}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', 'one of the listed values')}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind in ("too_long", "string_too_long"):
        return f"must have at most {ctx.get('max_length')} {'characters' if kind == 'string_too_long' else 'items'}"
    if kind in ("too_short", "string_too_short"):
        return f"must have at least {ctx.get('min_length')} {'character' if kind == 'string_too_short' else 'item'}(s)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "string_type" and isinstance(error.get("input"), bool):
        got = "true" if error["input"] else "false"
        return f"must be a string, got {got} (YAML reads unquoted yes/no/on/off as booleans: quote the value)"
    text = str(error["msg"])
    return text[0].lower() + text[1:]


def _field_path(loc: tuple[Any, ...]) -> str:
    # Union branches appear in pydantic locations (e.g. `str`, `list[...]`, `webhook`); drop them.
    parts = [clip(str(part)) for part in loc if not str(part).startswith(("list[", "function-", "literal["))]
    parts = [p for p in parts if p not in ("str", "int", "float", "bool", "SumValue", "webhook", "slack", "teams", "email")]
    return ".".join(parts).replace("for_", "for") or "(document)"


def _tag_problem(item: dict[str, Any]) -> tuple[str, str]:
    """A discriminated union (channels) without a usable ``type``: name the discriminator, not the union."""
    ctx = item.get("ctx", {})
    name = str(ctx.get("discriminator", "type")).strip("'")
    path = _field_path(tuple(item["loc"]))
    field_name = name if path == "(document)" else f"{path}.{name}"
    if item["type"] == "union_tag_not_found":
        return field_name, "required"
    tags = [tag.strip() for tag in str(ctx.get("expected_tags", "")).split(",") if tag.strip()]
    expected = ", ".join(tags[:-1]) + f" or {tags[-1]}" if len(tags) > 1 else "".join(tags)
    return field_name, f"must be {expected}"


def validation_problems(error: ValidationError) -> Iterator[tuple[str, str]]:
    """``(field path, message)`` per pydantic error, without repeats: how every YAML loader names a mistake."""
    seen: set[tuple[str, str]] = set()
    for item in error.errors(include_url=False):
        loc = item["loc"]
        message = _message(dict(item))
        pairs: list[tuple[str, str]]
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            pairs = [_tag_problem(dict(item))]
        elif isinstance(item.get("ctx", {}).get("error"), FieldProblems):
            block = _field_path(tuple(loc))
            prefix = "" if block == "(document)" else block + "."
            pairs = [(prefix + name, text) for name, text in item["ctx"]["error"].problems]
        elif item["type"] == "value_error" and _field_path(tuple(loc)) == "(document)":
            # Cross-field checks (model validators) join "field: message" pairs with "; ".
            pairs = []
            for part in message.split("; "):
                name, _, text = part.partition(": ")
                pairs.append((name, text) if text else ("(document)", part))
        else:
            pairs = [(_field_path(tuple(loc)), message)]
        for pair in pairs:
            if pair not in seen:
                seen.add(pair)
                yield pair
