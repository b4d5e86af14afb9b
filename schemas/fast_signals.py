r"""The fast path of signal validation: msgspec Structs translated from the schema pydantic validates signals with.

Validating a site signal with pydantic was about half of what replay spends
per line. msgspec decodes the same JSON into Structs in a third of the
instructions, but it is another parser with its own rules, so it is used
ONE-SIDEDLY: :func:`decode_signal` returns either a Struct whose fields are
exactly what pydantic would give, or None, and then pydantic decides (every
verdict and every reject reason stays pydantic's).

Nothing is written twice. :func:`_build` translates the core schema of
:data:`~schemas.signals.SIGNAL_ADAPTER` (what pydantic-core itself runs:
types, bounds, lengths, literals, patterns, validators, config), node by
node, and knows which keys of each node it translates: any other key (a new
constraint, an alias, a default, a validator with info, a config option)
makes that signal type :class:`Untranslatable`, left to pydantic, and named
in :data:`DECLINED`, which a test requires to stay empty.

Why a Struct from :func:`decode_signal` is what pydantic makes of the line:

- **Bytes.** A line with a backslash is declined, so a string's text is its
  bytes between the quotes: no escape (``\u0000``, a lone surrogate
  ``\ud800``, an escaped key) is interpreted by either parser. msgspec
  refuses invalid UTF-8 (overlong forms, encoded surrogates, past
  U+10FFFF), raw control characters in strings, a BOM, ``NaN`` and
  ``Infinity``, leading zeros, trailing commas and trailing bytes: what it
  decodes is an RFC 8259 document, and jiter (pydantic's parser) reads such a
  document to the same values. Tests check each case and mutations.
- **Shape.** ``type`` (the discriminator) names one of the site signal types,
  so both pick the same envelope model (``tick`` is not translated: its
  payload has a default). Every key is a field (``forbid_unknown_fields``,
  as ``extra_fields_behavior: forbid``), every required field is present.
- **Types**, as strict pydantic reads JSON: a ``str`` only from a string, an
  ``int`` only from an integer literal (msgspec refuses ``1.0``, ``1e2`` and
  ``true``; ``-0`` is 0 in both; every int field is bounded, so no big
  integer gets through), a ``bool`` only from ``true``/``false``, a literal
  only from one of its strings, a list from an array of those, the payload
  from an object, an optional field null or absent (None in both).
- **Constraints.** ``max_length``/``min_length`` count code points (list
  items) in both; ``ge``/``le``/``gt``/``lt`` are msgspec's checks of the same
  bounds; a ``pattern`` is checked by pydantic-core itself, with the very
  schema node of the field (one :class:`~pydantic_core.SchemaValidator` call
  per line for all of them: its Rust regex, none translated); an ``after``
  validator is called and must return its input itself (the flags'
  "no repeats").
- **Values.** msgspec builds ``str``, ``int``, ``bool`` and ``list`` objects, as
  pydantic does; nothing is coerced on either side.
- **No repeated key**, which pydantic's path rejects
  (:func:`schemas.records._repeated_key`): proved from the count of ``:``
  (:func:`decode_signal`), otherwise declined. The two parsers agree on
  the last value of a repeated key, but not necessarily on a repeated
  ``type``, so such a line is not read here at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Annotated, Any, Final, Literal, NamedTuple, Union

import msgspec
from pydantic_core import CoreConfig, SchemaValidator, core_schema

from schemas.signals import DISCRIMINATOR, SIGNAL_ADAPTER, SIGNAL_TYPES
from schemas.timestamps import TS_PATTERN


class Untranslatable(Exception):
    """A part of the schema the fast path has no exact equivalent for."""


Check = Callable[[Any], bool]
"""A test of a present field's value msgspec cannot make: False declines the line."""

_KEYS: dict[str, frozenset[str]] = {
    "str": frozenset({"pattern", "max_length", "min_length", "strict"}),
    "int": frozenset({"ge", "le", "gt", "lt", "strict"}),
    "bool": frozenset({"strict"}),
    "literal": frozenset({"expected"}),
    "list": frozenset({"items_schema", "max_length", "min_length", "strict"}),
    "nullable": frozenset({"schema"}),
    "default": frozenset({"schema", "default"}),
    "function-after": frozenset({"schema", "function"}),
    "model": frozenset({"cls", "schema", "custom_init", "root_model", "config", "ref"}),
    "model-fields": frozenset({"fields", "model_name", "computed_fields"}),
    "model-field": frozenset({"schema", "serialization_alias", "serialization_exclude", "frozen"}),
    "tagged-union": frozenset({"choices", "discriminator", "strict", "from_attributes"}),
}
"""The keys translated per node type, besides ``type`` and ``metadata`` (JSON Schema only). A node with another key, or
of another type, is untranslatable."""
_CONFIG = {"extra_fields_behavior": "forbid", "strict": True}
"""A model's config as the translation assumes it (``title`` may be there too: it names errors only)."""
_LENGTHS = ("max_length", "min_length")
_BOUNDS = ("ge", "le", "gt", "lt")
_COLONS = {TS_PATTERN: 2}
"""The ``:`` every value of a pattern holds (``HH:MM:SS``): a lower bound for :func:`decode_signal`'s count."""


def _node(schema: Mapping[str, Any], where: str) -> str:
    """The type of a core schema node whose keys are all translated."""
    kind = schema["type"]
    extra = set(schema) - {"type", "metadata"} - _KEYS.get(kind, frozenset())
    if kind not in _KEYS or extra:
        raise Untranslatable(f"{where}: {kind} {sorted(extra)}")
    if schema.get("strict", True) is not True and kind != "tagged-union":  # the union's: how a tag is read, not a value
        raise Untranslatable(f"{where}: not strict")
    return str(kind)


def _meta(base: Any, schema: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    constraints = {key: schema[key] for key in keys if key in schema}
    return Annotated[base, msgspec.Meta(**constraints)] if constraints else base


def _after(validator: Callable[[Any], Any]) -> Check:
    """An ``after`` validator as a check: it must return its very input (pydantic keeps what it returns)."""

    def passes(value: Any) -> bool:
        try:
            return validator(value) is value
        except Exception:  # what pydantic makes of it (a reject reason, or its own error) is for pydantic to say
            return False

    return passes


def _value(schema: Mapping[str, Any], where: str) -> tuple[Any, list[Check]]:
    """The msgspec type of a value's schema (no pattern), and the checks of its validators."""
    kind = _node(schema, where)
    if kind == "str" and "pattern" not in schema:
        return _meta(str, schema, _LENGTHS), []
    if kind == "int":
        return _meta(int, schema, _BOUNDS), []
    if kind == "bool":
        return bool, []
    if kind == "literal" and all(type(value) is str for value in schema["expected"]):
        return Literal[tuple(schema["expected"])], []
    if kind == "list":
        item, checks = _value(schema["items_schema"], f"{where}[]")
        if not checks:
            return _meta(list[item], schema, _LENGTHS), []  # type: ignore[valid-type]
    if kind == "function-after" and schema["function"]["type"] == "no-info" and set(schema["function"]) == {"type", "function"}:
        inner, checks = _value(schema["schema"], where)
        return inner, [*checks, _after(schema["function"]["function"])]
    raise Untranslatable(f"{where}: {kind} {schema.get('expected', '')}")


class _Field(NamedTuple):
    """A field :func:`decode_signal` looks at after msgspec."""

    path: str
    """Its attribute path from the envelope (``data.path``)."""
    node: Mapping[str, Any] | None
    """The schema node pydantic-core checks its value with (a pattern), or None (any value)."""
    key: bytes | None
    """``"name":`` for an optional field (:func:`_keys_given` looks for it), else None."""


class _Model(NamedTuple):
    """One model translated: an envelope, or a payload."""

    struct: type[msgspec.Struct]
    fields: list[_Field]
    """The patterned and the optional fields."""
    checks: list[tuple[str, Check]]
    """(attribute path, validator) of the fields with an ``after`` validator."""
    colons: int
    """The ``:`` the values of the required patterned fields hold at least."""
    keys: int
    """The keys of a line giving every field (the payload's and the tag included)."""
    payloads: list[tuple[str, type[msgspec.Struct]]]
    """The fields holding a model, with its Struct (an envelope's payload)."""


def _model(schema: Mapping[str, Any], where: str, tag: str | None = None) -> _Model:
    """A model's Struct; ``tag``: the value of the discriminator, for an envelope (the only model holding a model)."""
    if _node(schema, where) != "model" or schema["custom_init"] or schema["root_model"]:
        raise Untranslatable(f"{where}: not a plain model")
    config = {key: value for key, value in schema.get("config", {}).items() if key != "title"}
    if config != _CONFIG:
        raise Untranslatable(f"{where}: config {config}")
    fields_schema = schema["schema"]
    if _node(fields_schema, where) != "model-fields" or fields_schema["computed_fields"]:
        raise Untranslatable(f"{where}: computed fields")
    struct_fields: list[tuple[str, Any, Any]] = []
    fields: list[_Field] = []
    checks: list[tuple[str, Check]] = []
    payloads: list[tuple[str, type[msgspec.Struct]]] = []
    namespace: dict[str, Any] = {"__doc__": f"The fast path's {where} (generated by schemas/fast_signals.py)."}
    colons = keys = 0
    for name, field in fields_schema["fields"].items():
        at = f"{where}.{name}"
        _node(field, at)
        value = field["schema"]
        keys += 1
        if tag is not None and name == DISCRIMINATOR:
            if {key: item for key, item in value.items() if key != "metadata"} != {"type": "literal", "expected": [tag]}:
                raise Untranslatable(f"{at}: not the tag {tag!r}")
            namespace[name] = tag  # read like the model's field; msgspec keeps the tag out of the Struct's fields
            continue
        optional = value["type"] == "default"
        if optional:
            _node(value, at)
            if value["default"] is not None or _node(value["schema"], at) != "nullable":
                raise Untranslatable(f"{at}: a default other than None")
            value = value["schema"]
        present = value["schema"] if optional else value  # the schema of a value given (not null)
        key = f'"{name}":'.encode() if optional else None
        if tag is not None and present["type"] == "model" and not optional:
            payload = _model(present, at)
            struct_fields.append((name, payload.struct, msgspec.NODEFAULT))
            payloads.append((name, payload.struct))
            fields += [item._replace(path=f"{name}.{item.path}") for item in payload.fields]
            checks += [(f"{name}.{path}", check) for path, check in payload.checks]
            colons, keys = colons + payload.colons, keys + payload.keys
            continue
        if present["type"] == "str" and "pattern" in present:
            _node(present, at)
            kind: Any = _meta(str, present, _LENGTHS)
            fields.append(_Field(name, value, key))  # for an optional field, the nullable node: None passes
            colons += 0 if optional else _COLONS.get(present["pattern"], 0)
        else:
            kind, field_checks = _value(present, at)
            checks += [(name, check) for check in field_checks]
            if optional:
                fields.append(_Field(name, None, key))
        struct_fields.append((name, kind | None, None) if optional else (name, kind, msgspec.NODEFAULT))
    struct = msgspec.defstruct(
        str(fields_schema["model_name"]), struct_fields, kw_only=True, forbid_unknown_fields=True, frozen=True, gc=False,
        namespace=namespace, tag_field=DISCRIMINATOR if tag is not None else None, tag=tag, module=__name__,
    )
    return _Model(struct, fields, checks, colons, keys, payloads)


class _Plan(NamedTuple):
    """What :func:`decode_signal` does after msgspec, for one envelope Struct."""

    values: Callable[[Any], tuple[Any, ...]]
    """The values of the fields of :class:`_Field` (an ``attrgetter`` of their paths: one C call)."""
    patterns: Callable[[Any], bool]
    """pydantic-core's verdict on those values: a patterned field by its own schema node, an optional one as any."""
    checks: tuple[tuple[Callable[[Any], Any], Check], ...]
    keys: int
    colons: int
    optional: tuple[tuple[int, bytes], ...]
    """(index among the values, ``"name":``) of each optional field."""
    payload: str
    """The envelope's payload field."""


def _plan(name: str, schema: Mapping[str, Any]) -> tuple[type[msgspec.Struct], _Plan]:
    model = _model(schema, name, tag=name)
    if len(model.payloads) != 1 or len(model.fields) < 2:  # attrgetter of one path would not give a tuple
        raise Untranslatable(f"{name}: not one payload, or fewer than two checked fields")
    [(field, payload)] = model.payloads
    if set(payload.__struct_fields__) & {*model.struct.__struct_fields__, DISCRIMINATOR}:
        raise Untranslatable(f"{name}: a name in both the envelope and the payload")  # _keys_given needs them apart
    items = [core_schema.any_schema() if field.node is None else field.node for field in model.fields]
    validator = SchemaValidator(core_schema.tuple_schema(items), CoreConfig(strict=True))  # type: ignore[arg-type]
    plan = _Plan(attrgetter(*(field.path for field in model.fields)), validator.isinstance_python,
                 tuple((attrgetter(path), check) for path, check in model.checks), model.keys, model.colons,
                 tuple((index, item.key) for index, item in enumerate(model.fields) if item.key is not None), field)
    return model.struct, plan


def _build() -> tuple[msgspec.json.Decoder[Any], dict[type, _Plan], dict[str, str]]:
    """The decoder of the translated envelopes (a tagged union, as pydantic's), their plans, the types left out (why)."""
    union = SIGNAL_ADAPTER.core_schema
    if _node(union, "signal") != "tagged-union" or union["discriminator"] != DISCRIMINATOR:
        raise Untranslatable(f"signal: discriminated by {union.get('discriminator')!r}")
    plans: dict[type, _Plan] = {}
    declined: dict[str, str] = {}
    for name in SIGNAL_TYPES:
        try:
            struct, plan = _plan(name, union["choices"][name])
        except Untranslatable as reason:
            declined[name] = str(reason)
            continue
        plans[struct] = plan
    decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Union[tuple(plans)])  # type: ignore[arg-type]  # noqa: UP007
    return decoder, plans, declined


_DECODER, _PLANS, DECLINED = _build()
"""DECLINED: the site signal types the fast path leaves to pydantic, with the reason (a test requires none)."""
_decode: Final = _DECODER.decode
_BACKSLASH: Final = ord("\\")
_NOT_DECODED: Final = (msgspec.DecodeError, RecursionError)
"""msgspec's refusals (a ValidationError is a DecodeError), and nesting deeper than it follows (it skips the values
before the tag recursively)."""
_astuple = msgspec.structs.astuple


def decode_signal(raw: bytes) -> Any | None:
    """The envelope Struct of a JSON line, or None: pydantic decides (the module's docstring argues why).

    The line must also repeat no key, which the count of ``:`` proves.
    Without a backslash every ``"`` delimits a string and every ``:`` is
    literal: one follows the key of each member (of any object of the line),
    the others are in strings. So a line of M members whose strings hold C
    colons holds M + C of them. The tag, the fields not None and the null
    fields whose ``"name":`` is in the line (a string followed by ``:`` is a
    key; the envelope's and the payload's names differ) are K distinct names,
    each the key of a member: K ≤ M. The strings of their values hold S ≤ C
    colons, at least the two of ``ts``. A line holding K + S colons therefore
    has M = K: every member has its own name, so no object repeats a key and
    there is one payload. The usual line settles it with K and the lower
    bound of S (null fields are not looked for); otherwise :func:`_keys_given`
    counts both exactly, and a line that still does not add up is declined.
    """
    if _BACKSLASH in raw:
        return None
    try:
        signal = _decode(raw)
    except _NOT_DECODED:
        return None
    plan = _PLANS[type(signal)]
    values_of, patterns, checks, keys, colons, _, _ = plan  # unpacked: a NamedTuple's attributes cost a lookup each
    values = values_of(signal)
    if not patterns(values):
        return None
    if checks and not all(check(get(signal)) for get, check in checks):
        return None
    keys -= values.count(None)  # only optional fields are ever None
    given = raw.count(b":")
    if given == keys + colons or given == _keys_given(raw, signal, plan, values, keys):
        return signal
    return None


def _keys_given(raw: bytes, signal: Any, plan: _Plan, values: tuple[Any, ...], keys: int) -> int:
    """K + S of :func:`decode_signal`, exactly: the null fields named in the line counted, every string's ``:``."""
    keys += sum(1 for index, key in plan.optional if values[index] is None and raw.find(key) >= 0)
    for value in (*_astuple(signal), *_astuple(getattr(signal, plan.payload))):
        if type(value) is str:
            keys += value.count(":")
        elif type(value) is list:
            keys += sum(item.count(":") for item in value)
    return keys
