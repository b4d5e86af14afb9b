"""Compiled conditions (``operators/conditions.py``), drawn as ASCII truth grids.

A grid tests one payload field of one signal type. Its header lists the
field values (YAML, ``null`` = the field present and null, ``absent`` = the
field left out); each row is a test exactly as a rule author writes it in
``where:`` (YAML), then one mark per column::

                         |  0   5   null  absent
    {gte: 5}             |  .   X   .     .        X = the signal matches, . = it does not
    {prefix: "5"}        |  !                      ! = a load error (the loader rejects the test)

For every row the grid also checks that the loader (``schemas.conditions``)
accepts exactly the rows not marked ``!``, and that the same test compiled
next to an always-true second condition (the general path of
:func:`compile_conditions`) gives the same marks as alone (the one-field
fast path): the module's ``_single`` docstring promises they agree.

The module's invariants, one test each: a field that is absent or null fails
every test except ``ne``, ``not_in`` and ``exists: false``; all tests of a
mapping must hold (AND); numbers compare by value (``5`` equals ``5.0``);
nothing to test compiles to None. Every operator meets every field type
(enum, string, integer, boolean, list) at least once. Pure: payloads are the
real payload models, built in memory.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from operators.conditions import compile_conditions
from schemas.conditions import OPERATORS, check_conditions
from schemas.signals import PAYLOADS

ABSENT = object()


def payload(signal_type: str, base: dict[str, Any], name: str, value: Any) -> BaseModel:
    """A real payload of ``signal_type`` with ``name`` set to ``value`` (or left out for ABSENT)."""
    data = dict(base)
    if value is not ABSENT:
        data[name] = value
    return PAYLOADS[signal_type].model_validate(data)


def _column(text: str) -> Any:
    return ABSENT if text == "absent" else yaml.safe_load(text)


def check_grid(signal_type: str, base: dict[str, Any], name: str, grid: str) -> None:
    """Run one truth grid (see the module docstring)."""
    lines = [line for line in grid.strip("\n").splitlines() if line.strip() and not line.strip().startswith("#")]
    header, rows = lines[0], lines[1:]
    columns = [_column(cell) for cell in header.split("|", 1)[1].split()]
    payloads = [payload(signal_type, base, name, value) for value in columns]
    # The general path: the same test next to a condition that always holds.
    other = next(field for field in PAYLOADS[signal_type].model_fields if field != name and field in base)
    for row in rows:
        test_text, marks_text = (part.strip() for part in row.split("|", 1))
        test = yaml.safe_load(test_text)
        marks = marks_text.split("#", 1)[0].split()
        problems = check_conditions({name: test}, [signal_type], "where")
        if marks == ["!"]:
            assert problems, f"{name}: {test_text}: the loader should reject it"
            continue
        assert not problems, f"{name}: {test_text}: the loader rejects it: {problems}"
        assert len(marks) == len(columns), f"{name}: {test_text}: {len(marks)} marks for {len(columns)} columns"
        alone = compile_conditions({name: test})
        paired = compile_conditions({name: test, other: {"exists": True}})
        assert alone is not None and paired is not None
        for column, data, mark in zip(header.split("|", 1)[1].split(), payloads, marks, strict=True):
            assert mark in "X.", f"{name}: {test_text}: mark {mark!r}"
            want = mark == "X"
            assert alone(data) is want, f"{name}: {test_text} on {column}: got {alone(data)}, expected {want}"
            assert paired(data) is want, f"{name}: {test_text} on {column} (general path): got {paired(data)}"


# -- every operator on every field type ------------------------------------------------------

def test_enum_field() -> None:
    check_grid("mail", {"transport": "smtp"}, "outcome", """
                                  | sent  failed  bounced  deferred
        failed                    |  .     X       .        .         # a bare scalar is eq
        {eq: failed}              |  .     X       .        .
        {ne: failed}              |  X     .       X        X
        {in: [failed, bounced]}   |  .     X       X        .
        {not_in: [sent]}          |  .     X       X        X
        {prefix: f}               |  .     X       .        .
        {prefix: ""}              |  X     X       X        X
        {exists: true}            |  X     X       X        X
        {exists: false}           |  .     .       .        .
        {eq: lost}                |  !                                # not one of the enum's values
        {in: [failed, lost]}      |  !
        {prefix: z}               |  !                                # no value starts with z
        {gt: 1}                   |  !
        {contains: failed}        |  !
        {eq: [failed]}            |  !
        {in: []}                  |  !
        {eq: null}                |  !
    """)


def test_optional_string_field() -> None:
    check_grid("mail", {"outcome": "failed", "transport": "smtp"}, "error_class", """
                                  | auth  rate-limit  ''    null  absent
        auth                      |  X     .           .     .     .
        {eq: auth}                |  X     .           .     .     .
        {ne: auth}                |  .     X           X     X     X
        {in: [auth, dns]}         |  X     .           .     .     .
        {not_in: [auth]}          |  .     X           X     X     X
        {prefix: rate}            |  .     X           .     .     .
        {prefix: ""}              |  X     X           X     .     .     # every string, never a null
        {exists: true}            |  X     X           X     .     .
        {exists: false}           |  .     .           .     X     X
        {eq: 5}                   |  !
        {lt: 5}                   |  !
        {contains: a}             |  !
        {exists: yes}             |  X     X           X     .     .     # YAML reads yes as true
        {exists: 1}               |  !
    """)


def test_integer_field() -> None:
    check_grid("auth", {"outcome": "failure", "method": "password"}, "user_len", """
                                  | 0   5   256   null  absent
        5                         | .   X   .     .     .
        {eq: 5.0}                 | .   X   .     .     .              # numbers compare by value
        {eq: 5.5}                 | !                                  # can never equal an integer
        {ne: 5}                   | X   .   X     X     X
        {in: [0, 256.0]}          | X   .   X     .     .
        {not_in: [5]}             | X   .   X     X     X
        {gt: 5}                   | .   .   X     .     .
        {gt: 4.5}                 | .   X   X     .     .
        {gte: 5}                  | .   X   X     .     .
        {lt: 5}                   | X   .   .     .     .
        {lte: 5.0}                | X   X   .     .     .
        {gte: -1}                 | X   X   X     .     .              # a null is no number
        {exists: true}            | X   X   X     .     .
        {exists: false}           | .   .   .     X     X
        {eq: "5"}                 | !
        {gt: "5"}                 | !
        {prefix: "5"}             | !
        {contains: 5}             | !
        {eq: true}                | !                                  # a boolean is not a number
        {gt: true}                | !
    """)


def test_signed_integer_field() -> None:
    check_grid("file_edit", {"path": "wp-content/x.php", "change": "modified", "flags": []}, "size_delta", """
                                  | -4096  0   4096
        {lt: 0}                   |  X     .   .
        {gte: 0}                  |  .     X   X
        {in: [-4096, 4096]}       |  X     .   X
        {ne: 0}                   |  X     .   X
    """)


def test_boolean_field() -> None:
    check_grid("auth", {"outcome": "success", "method": "sso"}, "privileged", """
                                  | true  false  null  absent
        true                      |  X     .      .     .
        {eq: false}               |  .     X      .     .
        {ne: true}                |  .     X      X     X
        {in: [true]}              |  X     .      .     .
        {not_in: [true]}          |  .     X      X     X
        {exists: true}            |  X     X      .     .
        {exists: false}           |  .     .      X     X
        {eq: 1}                   |  !                                 # 1 is a number, never a boolean
        {gt: 0}                   |  !
        {prefix: t}               |  !
        {eq: "true"}              |  !
    """)


def test_list_field() -> None:
    check_grid("file_edit", {"path": "wp-content/uploads/x.php", "change": "created", "size_delta": 0}, "flags", """
                                  | []  [obfuscated]  [eval_call,obfuscated]  [php_in_uploads]
        {contains: obfuscated}    | .   X             X                       .
        {contains: eval_call}     | .   .             X                       .
        {contains: core_file}     | .   .             .                       .
        {exists: true}            | X   X             X                       X    # an empty list exists
        {exists: false}           | .   .             .                       .
        {contains: packed}        | !                                               # not a flag
        {contains: [obfuscated]}  | !                                               # one item at a time
        obfuscated                | !                                               # a list never equals a scalar
        {eq: obfuscated}          | !
        {ne: obfuscated}          | !
        {in: [obfuscated]}        | !
        {not_in: [obfuscated]}    | !
        {prefix: ob}              | !
        {gte: 1}                  | !
    """)


def test_every_operator_appears_in_a_grid() -> None:
    """The grids above are the coverage of the operator list: none is left untested."""
    source = inspect.getsource(sys.modules[__name__])
    for op in OPERATORS:
        assert f"{{{op}: " in source, op


# -- the invariants -------------------------------------------------------------------------------

ONE_OF_EACH: list[tuple[str, Any]] = [
    ("eq", "x"), ("ne", "x"), ("in", ["x"]), ("not_in", ["x"]), ("gt", 0), ("gte", 0), ("lt", 0), ("lte", 0),
    ("prefix", ""), ("exists", True), ("exists", False), ("contains", "x"),
]


@pytest.mark.parametrize(("op", "arg"), ONE_OF_EACH, ids=[f"{op}-{arg}" for op, arg in ONE_OF_EACH])
def test_absent_or_null_fails_every_test_but_ne_not_in_and_exists_false(op: str, arg: Any) -> None:
    """Whatever the operator's argument, a null field only satisfies ``ne``, ``not_in`` and ``exists: false``."""
    holds = compile_conditions({"error_class": {op: arg}})
    assert holds is not None
    null = PAYLOADS["mail"].model_validate({"outcome": "sent", "transport": "smtp", "error_class": None})
    absent = PAYLOADS["mail"].model_validate({"outcome": "sent", "transport": "smtp"})
    expected = op in ("ne", "not_in") or (op, arg) == ("exists", False)
    assert holds(null) is expected
    assert holds(absent) is expected


def test_all_tests_of_a_mapping_must_hold() -> None:
    """AND, on the default pack's suspicious-file-edit condition: one row per payload."""
    conditions = {"flags": {"contains": "php_in_uploads"}, "change": {"in": ["created", "modified"]}}
    assert check_conditions(conditions, ["file_edit"], "where") == []
    holds = compile_conditions(conditions)
    assert holds is not None
    table = """
        created   [php_in_uploads]              X
        modified  [php_in_uploads,eval_call]    X
        deleted   [php_in_uploads]              .      # flags hold, change does not
        created   [eval_call]                   .      # change holds, flags do not
        deleted   []                            .
    """
    for line in table.strip().splitlines():
        change, flags, mark = line.split("#", 1)[0].split()
        data = PAYLOADS["file_edit"].model_validate({"path": "wp-content/uploads/a.php", "change": change,
                                                     "size_delta": 10, "flags": yaml.safe_load(flags)})
        assert holds(data) is (mark == "X"), line


def test_a_test_per_field_on_three_fields() -> None:
    """More than two tests: still every one of them, whatever the order they are written in."""
    tests = {"status": {"gte": 500}, "route_group": {"ne": "static"}, "duration_ms": {"lt": 30_000}}
    base = {"method": "GET", "path": "/", "route_group": "frontend", "status": 503, "duration_ms": 12}
    for order in (list(tests), list(reversed(tests))):
        holds = compile_conditions({name: tests[name] for name in order})
        assert holds is not None
        request = PAYLOADS["request"]
        assert holds(request.model_validate(base))
        assert not holds(request.model_validate({**base, "status": 499}))
        assert not holds(request.model_validate({**base, "route_group": "static"}))
        assert not holds(request.model_validate({**base, "duration_ms": 30_000}))


def test_one_condition_over_several_signal_types() -> None:
    """A field every type has, a value only one type can take: valid, and it matches only there."""
    conditions = {"kind": {"in": ["connection_error", "theme"]}, "duration_ms": {"exists": False}}
    assert check_conditions({"kind": "connection_error"}, ["db_event", "plugin"], "where") == []
    assert check_conditions({"duration_ms": {"gte": 1000}}, ["cron", "db_event", "request"], "where") == []
    assert check_conditions({"duration_ms": 1}, ["db_event", "plugin"], "where") != []  # plugin has no duration_ms
    holds = compile_conditions({"kind": "connection_error"})
    assert holds is not None
    assert holds(PAYLOADS["db_event"].model_validate({"kind": "connection_error"}))
    assert not holds(PAYLOADS["plugin"].model_validate({"slug": "akismet", "kind": "plugin", "action": "updated"}))
    both = compile_conditions(conditions)
    assert both is not None
    assert both(PAYLOADS["db_event"].model_validate({"kind": "connection_error"}))
    assert not both(PAYLOADS["db_event"].model_validate({"kind": "connection_error", "duration_ms": 3}))


@pytest.mark.parametrize("conditions", [None, {}])
def test_nothing_to_test_compiles_to_none(conditions: dict[str, Any] | None) -> None:
    """No ``where``: every signal of the rule's types passes, and the engine skips the call."""
    assert compile_conditions(conditions) is None
