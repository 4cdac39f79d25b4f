"""The CLI's one way to print untrusted text (``deploy_helper.cli.output``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from deploy_helper.cli.output import literal, literal_lines, text


@given(st.text())
def test_nothing_a_terminal_acts_on_survives(value: str) -> None:
    shown = literal(value)
    assert all(c.isprintable() for c in shown)
    if value.isprintable():
        assert shown == value  # ordinary text (markup characters included) is left as it is


def test_each_kind_of_control_is_shown_as_an_escape() -> None:
    assert literal("a\x1b[2Jb\rc\nd\te\x07f\x9b\u202eg\u2028h\u200bi\xa0j") == (
        "a\\x1b[2Jb\\rc\\nd\\te\\x07f\\x9b\\u202eg\\u2028h\\u200bi\\xa0j"
    )
    assert literal(None) == "" and literal(42) == "42"
    assert literal_lines("one\x1b\ntwo\r") == "one\\x1b\ntwo\\r"


def test_text_is_never_read_as_markup() -> None:
    console = Console(record=True, width=200, force_terminal=True)
    console.print(text("[/][link=https://evil.example]x[/link][bold red]y\x1b[2J", "green"))
    exported = console.export_text()
    assert exported.strip() == "[/][link=https://evil.example]x[/link][bold red]y\\x1b[2J"
