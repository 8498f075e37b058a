"""The segment rule language: evaluation (projections/segments.py), validation
(events/segments.py) and the text form (events/segment_text.py)."""

from __future__ import annotations

from typing import Any

import pytest

from events.errors import InvalidInputError
from events.segment_text import parse_text, to_text
from events.segments import (
    FIELDS,
    MAX_DEPTH,
    MAX_LIST,
    MAX_NODES,
    fields_used,
    segment_key,
    segment_name,
    validate_rules,
)
from projections.segments import matches
from projections.value_tiers import check_bounds, tier_of, value_tiers

ROW: dict[str, Any] = {
    "arr": 60000.0, "seats": 40, "tier": "Growth", "industry": "Retail", "owner": "Dana", "status": "active",
    "domain": "acme.com", "days_to_renewal": 45, "health": 35.5, "band": "red", "nps": 6, "stage": "renewal",
}  # fmt: skip


def c(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"field": field, "op": op, "value": value}


def ok(rule: Any, row: dict[str, Any] = ROW) -> bool:
    return matches(validate_rules(rule), row)


def err(rule: Any) -> str:
    with pytest.raises(InvalidInputError) as caught:
        validate_rules(rule)
    return str(caught.value)


# ------------------------------------------------------------------ evaluation
@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (c("arr", ">=", 60000), True), (c("arr", ">", 60000), False), (c("arr", "<", 60000.5), True),
        (c("arr", "<=", 59999), False), (c("arr", "=", 60000), True), (c("arr", "!=", 60000), False),
        (c("seats", "in", [10, 40]), True), (c("seats", "in", [10, 20]), False),
        (c("tier", "=", "growth"), True), (c("tier", "=", "GROWTH "), True), (c("tier", "!=", "growth"), False),
        (c("industry", "in", ["finance", "retail"]), True), (c("owner", "=", "sam"), False),
        (c("band", "in", ["red", "yellow"]), True), (c("band", "=", "green"), False),
        (c("health", "<", 40), True), (c("nps", "<=", 6), True), (c("days_to_renewal", "<=", 90), True),
        (c("domain", "=", "acme.com"), True), (c("status", "=", "active"), True), (c("stage", "=", "renewal"), True),
    ],
)  # fmt: skip
def test_comparisons(rule: dict[str, Any], expected: bool) -> None:
    assert ok(rule) is expected


def test_and_or_not_combine() -> None:
    high, red, retail = c("arr", ">=", 50000), c("band", "=", "red"), c("industry", "=", "retail")
    assert ok({"all": [high, red]}) and not ok({"all": [high, c("band", "=", "green")]})
    assert ok({"any": [c("arr", "<", 1), red]}) and not ok({"any": [c("arr", "<", 1), c("band", "=", "green")]})
    assert not ok({"not": retail}) and ok({"not": {"not": retail}})
    assert ok({"all": [high, {"any": [c("nps", ">=", 9), {"not": c("owner", "=", "sam")}]}]})


def test_missing_values() -> None:
    row = {**ROW, "arr": None, "health": None, "band": "unknown", "tier": None, "nps": None}
    # Ordering against "no value" is false both ways; so its negation is true.
    assert not ok(c("health", "<", 40), row) and not ok(c("health", ">=", 40), row)
    assert ok({"not": c("health", ">=", 40)}, row)
    # = / != / in treat "no value" as null.
    assert ok(c("arr", "=", None), row) and not ok(c("arr", "!=", None), row) and ok(c("arr", "!=", None))
    assert ok(c("tier", "!=", "growth"), row) and ok(c("tier", "in", ["growth", None]), row)
    assert ok(c("band", "=", "unknown"), row)


# ------------------------------------------------------------------ validation
def test_unknown_field_names_the_path_and_lists_the_fields() -> None:
    message = err({"all": [c("arr", ">=", 1), c("revenue", ">=", 1)]})
    assert message.startswith("rules.all[1].field: unknown field 'revenue'; fields: arr, seats, tier")
    assert all(name in message for name in FIELDS)
    assert err({"any": [{"not": c("colour", "=", "x")}]}).startswith("rules.any[0].not.field: unknown field 'colour'")


@pytest.mark.parametrize(
    ("rule", "path", "words"),
    [
        (c("arr", ">=", "50000"), "rules.value", "arr is a number"),
        (c("arr", ">=", True), "rules.value", "arr is a number"),
        (c("health", ">", 120), "rules.value", "between 0 and 100"),
        (c("nps", ">=", -50), "rules.value", "between 0 and 10"),
        (c("band", "=", "purple"), "rules.value", "green, yellow, red, unknown"),
        (c("status", "in", ["active", "lost"]), "rules.value[1]", "active, churned"),
        (c("tier", "=", 5), "rules.value", "tier is text"),
        (c("tier", "<", "b"), "rules.op", "does not apply to the text field 'tier'"),
        (c("band", ">=", "red"), "rules.op", "does not apply to the choice field 'band'"),
        (c("arr", "like", 1), "rules.op", "unknown operator 'like'"),
        (c("arr", "in", 5), "rules.value", "'in' takes a non-empty list"),
        (c("arr", "in", []), "rules.value", "'in' takes a non-empty list"),
        (c("arr", "<", None), "rules.value", "null cannot be ordered"),
        ({"field": "arr", "op": ">="}, "rules.value", "required"),
        ({"field": "arr", "value": 1}, "rules.op", "required"),
        ({"field": "arr", "op": ">=", "value": 1, "unit": "usd"}, "rules.unit", "unknown key"),
        ({"all": []}, "rules.all", "non-empty list"),
        ({"all": [c("arr", ">", 1)], "any": []}, "rules.any", "no other keys"),
        ({"every": []}, "rules", "expected one of the keys"),
        ([c("arr", ">", 1)], "rules", "expected a rule object"),
        ({"all": ["arr > 1"]}, "rules.all[0]", "expected a rule object"),
    ],
)
def test_validation_errors_name_path_and_fix(rule: Any, path: str, words: str) -> None:
    message = err(rule)
    assert message.startswith(f"{path}: ") and words in message, message


def test_json_form_sent_as_a_string_is_accepted() -> None:
    assert validate_rules('{"all": [{"field": "arr", "op": ">", "value": 5}]}') == {"all": [c("arr", ">", 5)]}
    assert err('{"field": "arr", ').startswith("rules: looks like JSON but does not parse")
    assert err('[{"field": "arr", "op": ">", "value": 5}]').startswith("rules: expected a rule object")


def test_normalises_ops_fields_and_choices() -> None:
    assert validate_rules(c(" ARR ", "==", 5)) == c("arr", "=", 5)
    assert validate_rules(c("band", "in", ["Red", " YELLOW"])) == c("band", "in", ["red", "yellow"])
    assert validate_rules(c("arr", "ge", 5)) == c("arr", ">=", 5)


def test_depth_and_size_limits() -> None:
    rule: dict[str, Any] = c("arr", ">", 1)
    for _ in range(MAX_DEPTH - 1):
        rule = {"not": rule}
    validate_rules(rule)  # exactly at the limit
    assert "nested too deeply" in err({"not": rule})
    assert "at most 100 values" in err(c("arr", "in", list(range(MAX_LIST + 1))))
    assert "at most 100 rules in one list" in err({"all": [c("arr", ">", i) for i in range(MAX_LIST + 1)]})
    wide = {"all": [{"any": [c("arr", ">", i) for i in range(50)]}, {"any": [c("arr", ">", i) for i in range(50)]}]}
    assert "too many rules" in err(wide) and MAX_NODES == 100


def test_fields_used() -> None:
    assert fields_used(validate_rules("arr > 1 and not (band = red or stage = renewal)")) == {"arr", "band", "stage"}


# ------------------------------------------------------------------ text form
def test_text_form_precedence_and_lists() -> None:
    assert parse_text("arr >= 50000 and band = red or nps <= 6") == {
        "any": [{"all": [c("arr", ">=", 50000), c("band", "=", "red")]}, c("nps", "<=", 6)]
    }
    assert parse_text("arr >= 50000 and (band = red or nps <= 6)") == {
        "all": [c("arr", ">=", 50000), {"any": [c("band", "=", "red"), c("nps", "<=", 6)]}]
    }
    assert parse_text("NOT tier in [growth, 'big co', \"x\"] AND health = null") == {
        "all": [{"not": c("tier", "in", ["growth", "big co", "x"])}, c("health", "=", None)]
    }
    assert parse_text("tier not in [a] and days_to_renewal < -5.5 and domain = acme.com") == {
        "all": [{"not": c("tier", "in", ["a"])}, c("days_to_renewal", "<", -5.5), c("domain", "=", "acme.com")]
    }


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("arr >=", "expected a value"), ("arr 5", "expected an operator"), ("(arr > 5", "expected ')'"),
        ("arr > 5 band = red", "expected 'and', 'or' or the end"), ("band in red", "expected '['"),
        ("arr > 5 and", "expected a field name"), ("arr ~ 5", "cannot read '~ 5'"), ("", "empty"),
        ("(" * 40 + "arr > 1" + ")" * 40, "nested"),
    ],
)  # fmt: skip
def test_text_form_errors(text: str, words: str) -> None:
    message = err(text)
    assert message.startswith("rules: ") and words in message, message


def test_text_form_errors_say_where() -> None:
    assert "at character 9" in err("arr > 5 band = red")


def test_text_and_json_forms_agree_and_round_trip() -> None:
    text = 'arr >= 50000 and (band in [red, yellow] or not industry = "retail") and owner != null'
    rule = validate_rules(text)
    assert validate_rules(to_text(rule)) == rule
    assert to_text(rule) == "arr >= 50000 and (band in [red, yellow] or not industry = retail) and owner != null"
    odd = validate_rules(c("industry", "in", ["and", "big co", "3m", 'say "hi"', "naïve"]))
    assert to_text(odd) == 'industry in ["and", "big co", "3m", "say \\"hi\\"", naïve]'
    assert validate_rules(to_text(odd)) == odd
    assert err("revenue > 5").startswith("rules.field: unknown field 'revenue'")


# ----------------------------------------------------------- names and tiers
def test_segment_names() -> None:
    assert segment_name("  Enterprise   at risk ") == "Enterprise at risk"
    assert segment_key("Enterprise AT  risk") == "enterprise at risk"
    for bad in ("", " ", "-x", "x" * 81, "a;b", 5):
        with pytest.raises(InvalidInputError, match="^name: "):
            segment_name(bad)


def test_value_tier_bounds() -> None:
    assert [tier_of(a, (10, 50, 150)) for a in (0, 9.99, 10, 49, 50, 150, 1e9)] == [
        "starter", "starter", "growth", "growth", "enterprise", "strategic", "strategic"]  # fmt: skip
    cases = (([1, 2], "bounds"), ([1, 2, 2], "bounds[2]"), ([0, 2, 3], "bounds[0]"), ([1, 2, float("nan")], "bounds[2]"))
    for bounds, path in cases:
        with pytest.raises(InvalidInputError, match=rf"^{path.replace('[', '.').replace(']', '.')}: "):
            check_bounds(bounds)
    rows = [{"client_id": "a", "status": "active", "arr": None, "health": None, "band": "unknown"},
            {"client_id": "b", "status": "churned", "arr": 5.0, "health": 10.0, "band": "red"}]  # fmt: skip
    report = value_tiers(rows)
    assert report["without_arr"] == {"count": 1, "client_ids": ["a"]} and report["active_customers"] == 1
    assert all(t["count"] == 0 and t["mean_health"] is None for t in report["tiers"])


def test_docs_describe_every_field_and_the_service_levels() -> None:
    from pathlib import Path

    from projections.value_tiers import SERVICE_LEVELS

    doc = (Path(__file__).parents[2] / "docs" / "segments.md").read_text()
    assert all(f"| `{name}` |" in doc for name in FIELDS)
    assert all(f"| {tier} | " in doc and level in doc for tier, level in SERVICE_LEVELS.items())
    examples = doc.split("### Examples", 1)[1].split("```", 1)[0]
    texts = [row.split("|")[2].strip().strip("`") for row in examples.splitlines() if row.startswith("| ") and "`" in row]
    assert len(texts) == 8
    for text in texts:  # every example in the table is a valid rule
        validate_rules(text)


def test_docs_quote_the_real_error_messages() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "segments.md").read_text()
    for rule in ({"all": [c("arr", ">", 1), c("revenue", ">", 1)]}, c("arr", ">=", "50k"),
                 {"any": [c("band", "=", "amber")]}, c("tier", "<", "a"), c("nps", ">=", -20), "arr >= "):  # fmt: skip
        assert err(rule) in doc
