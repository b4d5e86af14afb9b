"""Hostile rule files: every bound of the YAML loader and of a rules directory, one line each, bounded work.

The fixtures of the failure modes are in ``tests/rules/invalid/`` (checked line
for line by ``tests/rules/test_loader.py``); the inputs too large to commit are
generated here. The CLI runs in a child whose address space is capped at
1 GiB: an expansion that walked the whole value would die there, not pass.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.registry import RegistryError, load_registry
from schemas.excerpt import LIMIT, clip, excerpt
from schemas.problems import MAX_ALIAS_NODES, MAX_YAML_DEPTH, MAX_YAML_NODES, StrictYamlLoader
from schemas.rule_loader import MAX_DEFINITIONS, MAX_FILE_BYTES, MAX_FILES, RuleLoadError, load_rules

INVALID = Path(__file__).parents[1] / "rules" / "invalid"
LOGYSTERA = shutil.which("logystera", path=str(Path(sys.executable).parent)) or shutil.which("logystera")
ADDRESS_SPACE = 1 << 30
RULE = "id: one\ntitle: One\nseverity: high\nsubsystem: mail\nsignal: mail\nkind: match\n"


def load(text: str) -> Any:
    return yaml.load(text, Loader=StrictYamlLoader)


def refusal(text: str) -> str:
    """The problem of a refused YAML text, with its position."""
    with pytest.raises(yaml.MarkedYAMLError) as info:
        load(text)
    mark = info.value.problem_mark
    assert mark is not None
    return f"{info.value.problem} at line {mark.line + 1}, column {mark.column + 1}"


def problems_of(path: Path) -> list[str]:
    with pytest.raises(RuleLoadError) as info:
        load_rules(path)
    return [line.replace(f"{path}/", "DIR/") for line in info.value.problems]


# --- through the real CLI, with 1 GiB of address space -----------------------------------------


def _cap_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _deep_list(tmp_path: Path) -> Path:
    (tmp_path / "rule.yaml").write_text(RULE.replace("title: One", "title: " + "[" * 5000 + "]" * 5000))
    return tmp_path


def _deep_mapping(tmp_path: Path) -> Path:
    (tmp_path / "rule.yaml").write_text(RULE + "where: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n")
    return tmp_path


HOSTILE = {
    "alias bomb in a duration": (lambda _: INVALID / "yaml-alias-bomb", "aliases expand to more than 10000 nodes at line 14, column 11"),
    "list 5000 deep in title": (_deep_list, "nested deeper than 64 levels at line 2, column 71"),
    "mapping 3000 deep in where": (_deep_mapping, "nested deeper than 64 levels at line 7, column 257"),
    "5000-digit integer in a condition": (
        lambda _: INVALID / "int-huge", f"integer {'9' * 59}… is outside ±(2^53 − 1) at line 7, column 17",
    ),
}


@pytest.mark.process
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_rules_check_refuses_a_hostile_file_in_one_line_within_1_gib(case: str, tmp_path: Path) -> None:
    make, problem = HOSTILE[case]
    directory = make(tmp_path)
    assert LOGYSTERA is not None, "the logystera console script is not installed"
    result = subprocess.run(
        [LOGYSTERA, "rules", "check", str(directory)],
        capture_output=True, text=True, encoding="utf-8", timeout=120, check=False, preexec_fn=_cap_address_space,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"{directory / 'rule.yaml'}: (file): yaml: {problem}\n"


# --- the loader's bounds, at their edges ---------------------------------------------------------


def test_aliases_may_add_exactly_the_budget_of_nodes() -> None:
    anchor = "a: &x [" + ", ".join(["0"] * 99) + "]\n"  # 100 nodes
    uses = MAX_ALIAS_NODES // 100
    assert len(load(anchor + "b: [" + ", ".join(["*x"] * uses) + "]\n")["b"]) == uses
    assert refusal(anchor + "b: [" + ", ".join(["*x"] * (uses + 1)) + "]\n") == (
        f"aliases expand to more than {MAX_ALIAS_NODES} nodes at line 2, column {5 + 4 * uses}"
    )


def test_nested_aliases_count_at_their_expanded_size() -> None:
    # a is 10 nodes, b (ten *a) 101, c (ten *b) 1011: b and c add 100 + 1010 nodes through aliases.
    text = "a: &a [0, 0, 0, 0, 0, 0, 0, 0, 0]\nb: &b [" + ", ".join(["*a"] * 10) + "]\nc: &c [" + ", ".join(["*b"] * 10) + "]\n"
    assert len(load(text + "d: [" + ", ".join(["*c"] * 8) + "]")["d"]) == 8  # 1110 + 8 × 1011 = 9198
    assert refusal(text + "d: [" + ", ".join(["*c"] * 9) + "]") == (  # 1110 + 9 × 1011 = 10209
        "aliases expand to more than 10000 nodes at line 4, column 37"
    )


def test_merge_keys_for_many_rules_fit_the_budget(tmp_path: Path) -> None:
    base = "  - &base {id: base, title: Base, severity: high, subsystem: mail, signal: mail, kind: match}\n"
    rules = "".join(f"  - {{<<: *base, id: rule-{i}, title: Rule {i}}}\n" for i in range(200))
    (tmp_path / "rules.yaml").write_text("rules:\n" + base + rules)
    ruleset = load_rules(tmp_path)
    assert len(ruleset.rules) == 201 and ruleset.rules[-1].id == "rule-199" and ruleset.rules[-1].subsystem == "mail"


def test_nesting_may_reach_exactly_the_depth_limit() -> None:
    inner = MAX_YAML_DEPTH - 1  # the root mapping is the first level
    assert load("a: " + "[" * inner + "]" * inner) is not None
    assert refusal("a: " + "[" * (inner + 1) + "]" * (inner + 1)) == f"nested deeper than 64 levels at line 1, column {4 + inner}"


def test_a_stream_may_hold_exactly_the_node_limit() -> None:
    items = MAX_YAML_NODES - 1  # the sequence itself is the first node
    assert len(load("[" + ",".join(["1"] * items) + "]")) == items
    refused = refusal("[" + ",".join(["1"] * (items + 1)) + "]")
    assert refused.startswith(f"more than {MAX_YAML_NODES} nodes at line 1, column ")


def test_an_alias_counts_at_its_expanded_depth() -> None:
    anchor = "a: &x " + "[" * 40 + "]" * 40 + "\n"  # 40 levels below the root
    assert load(anchor + "b: " + "[" * 23 + "*x" + "]" * 23) is not None  # 1 + 23 + 40 = 64
    assert refusal(anchor + "b: " + "[" * 24 + "*x" + "]" * 24) == "nested deeper than 64 levels at line 2, column 28"


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    assert refusal("a: &x [1, *x]") == "alias 'x' is inside its own anchor at line 1, column 11"


def test_anchors_and_their_sizes_are_per_document() -> None:
    documents = "---\n".join(f"a: &x [{i}]\nb: *x\n" for i in range(200))
    assert [document["b"] for document in yaml.load_all(documents, Loader=StrictYamlLoader)] == [[i] for i in range(200)]
    with pytest.raises(yaml.MarkedYAMLError, match="found undefined alias 'x'"):
        list(yaml.load_all("a: &x [1]\n---\nb: *x\n", Loader=StrictYamlLoader))


@pytest.mark.parametrize("literal", ["9007199254740991", "-9007199254740991", "0x1FFFFFFFFFFFFF", "0b" + "1" * 53, "0" * 100 + "7",
                                     "1_000"])
def test_integers_within_the_contract_range_load(literal: str) -> None:
    assert abs(load(f"n: {literal}")["n"]) <= 2**53 - 1


@pytest.mark.parametrize("literal", ["9007199254740992", "-9007199254740992", "0x20000000000000", "0b1" + "0" * 53, "1" + "0" * 5000,
                                     "1" + ":00" * 200_000], ids=["2^53", "-2^53", "hex", "binary", "5000-digits", "sexagesimal"])
def test_integers_outside_the_contract_range_are_refused(literal: str) -> None:
    assert refusal(f"n: {literal}") == f"integer {clip(literal)} is outside ±(2^53 − 1) at line 1, column 4"


@pytest.mark.parametrize(("text", "problem"), [
    ("n: !!int abc", "'abc' is not a valid !!int"),
    ("n: !!int 09", "'09' is not a valid !!int"),
    ("n: !!float abc", "'abc' is not a valid !!float"),
    ("n: !!bool maybe", "'maybe' is not a valid !!bool"),
    ("n: !!timestamp 2026-13-45", "'2026-13-45' is not a valid !!timestamp"),
    ("n: !!map [a]", "expected a mapping node, but found sequence"),
])
def test_explicit_tags_that_do_not_fit_are_yaml_errors(text: str, problem: str) -> None:
    assert refusal(text) == f"{problem} at line 1, column 4"


def test_the_site_registry_shares_the_protection(tmp_path: Path) -> None:
    bomb = (INVALID / "yaml-alias-bomb" / "rule.yaml").read_text()
    path = tmp_path / "sites.yaml"
    path.write_text("sites:\n  - id: shop\n    secret_env: SHOP\n    disabled_types:\n" + bomb.split("  window:\n", 1)[1])
    with pytest.raises(RegistryError) as info:
        load_registry(path, {"SHOP": "s3cr3t"})
    assert info.value.problems == [f"{path}: (file): line 9: not valid YAML: aliases expand to more than 10000 nodes"]


# --- bounds of a rules directory -----------------------------------------------------------------


def test_a_file_of_exactly_1_mib_loads_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rule.yaml"
    path.write_text(RULE + "#" + "x" * (MAX_FILE_BYTES - len(RULE) - 2) + "\n")
    assert path.stat().st_size == MAX_FILE_BYTES
    assert [rule.id for rule in load_rules(tmp_path).rules] == ["one"]
    with path.open("a") as stream:
        stream.write("\n")
    assert problems_of(tmp_path) == ["DIR/rule.yaml: (file): size: larger than 1 MiB (1048576 bytes), the limit for a rule file"]


def test_more_rule_files_than_the_limit_are_refused_before_any_is_read(tmp_path: Path) -> None:
    for index in range(MAX_FILES + 1):
        (tmp_path / f"r{index}.yml").write_text("id: [not a rule\n")
    with pytest.raises(RuleLoadError) as info:
        load_rules(tmp_path)
    assert info.value.problems == [f"{tmp_path}: (directory): files: more than 1000 rule files (*.yaml, *.yml); that is the limit"]


def test_loading_stops_past_the_limit_of_definitions(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("[" + ", ".join(["0"] * (MAX_DEFINITIONS + 1)) + "]\n")
    (tmp_path / "b.yaml").write_text(RULE.replace("kind: match", "kind: unknown"))  # never read
    problems = problems_of(tmp_path)
    assert len(problems) == MAX_DEFINITIONS + 1
    assert problems[-2] == f"DIR/a.yaml: rule #{MAX_DEFINITIONS}: (document): must be a mapping"
    assert problems[-1] == (
        "DIR/a.yaml: (file): definitions: more than 10000 rules, metrics and channels; that is the limit for a rules directory"
    )


# --- quoting values in messages ------------------------------------------------------------------


def test_excerpt_of_an_exponentially_shared_value_is_short() -> None:
    value: list[Any] = ["lol"] * 9
    for _ in range(40):  # 9^41 items if printed in full
        value = [value] * 9
    assert excerpt(value) == "[[[[...], [...], [...], [...], [...], [...], [...], [...], …"


@pytest.mark.parametrize(("value", "shown"), [
    ("a" * 1000, "'" + "a" * (LIMIT - 2) + "…"),
    ("ab", "'ab'"),
    (b"x" * 1000, "b'" + "x" * (LIMIT - 3) + "…"),
    (10**5000, "<integer of 16610 bits>"),
    (list(range(100)), "[0, 1, 2, 3, 4, 5, 6, 7, ...]"),
    ({"a": {"b": {"c": {"d": 1}}}}, "{'a': {'b': {'c': {...}}}}"),
], ids=["long-str", "short-str", "long-bytes", "huge-int", "long-list", "deep-dict"])
def test_excerpt_is_the_start_of_the_repr_within_the_limit(value: Any, shown: str) -> None:
    assert excerpt(value) == shown
    assert len(shown) <= LIMIT
