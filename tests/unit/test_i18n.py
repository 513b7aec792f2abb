"""The pages' language: ``?lang=`` first, then the flow's stored choice, then ``Accept-Language``
(q-values honoured; ru, uk and be read Russian, en English), Russian when in doubt — and a
catalogue with the same texts in both languages, spelled the project's way."""

from __future__ import annotations

import re

import pytest

from amobridge.connect.problems import PROBLEMS, PROBLEMS_RU, problem_texts
from amobridge.i18n import (
    TEXTS,
    Texts,
    choose_language,
    from_accept_language,
    parse_language,
    preferred_language,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("en-US,en;q=0.9", "en"),
        ("ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7", "ru"),
        ("en;q=0.5, ru;q=0.9", "ru"),
        ("ru;q=0.1, en", "en"),
        ("uk-UA", "ru"),
        ("be", "ru"),
        ("de-DE, fr;q=0.9, en;q=0.8", "en"),  # the first language we speak, by weight
        ("de-DE, fr;q=0.9", None),
        ("*", None),
        ("en;q=0, ru;q=0.1", "ru"),  # q=0 means "not this one"
        ("en;q=abc, ru;q=0.2", "ru"),  # a malformed weight drops its entry
        ("EN-gb", "en"),
        ("", None),
        (None, None),
    ],
)
def test_accept_language_is_read_by_weight(header: str | None, expected: str | None) -> None:
    assert from_accept_language(header) == expected


def test_the_query_beats_the_stored_choice_which_beats_the_browser() -> None:
    assert choose_language("en", "ru", stored="ru") == "en"
    assert choose_language(None, "ru-RU", stored="en") == "en"
    assert choose_language("xx", "ru-RU", stored="en") == "en"  # an unknown ?lang is ignored
    assert choose_language(None, "en-US") == "en"
    assert choose_language(None, "de") == "ru"  # in doubt: Russian
    assert choose_language() == "ru"


def test_only_a_request_that_says_something_is_kept_for_the_flow() -> None:
    assert preferred_language(None, None) is None
    assert preferred_language(None, "de") is None
    assert preferred_language("en", None) == "en"
    assert preferred_language(None, "uk") == "ru"
    assert parse_language("ru-RU") == "ru"
    assert parse_language("uk") is None  # ?lang takes ru or en


def test_both_languages_have_the_same_texts_and_problems() -> None:
    assert set(TEXTS["ru"]) == set(TEXTS["en"])
    assert set(PROBLEMS_RU) == set(PROBLEMS)
    for code in PROBLEMS:
        for lang in ("ru", "en"):
            assert all(problem_texts(code, lang)), (code, lang)


def _all_texts() -> list[tuple[str, str]]:
    found = [(lang, text) for lang, texts in TEXTS.items() for text in texts.values()]
    found += [("ru", text) for texts in PROBLEMS_RU.values() for text in texts]
    found += [("en", text) for texts in PROBLEMS.values() for text in texts]
    return found


def test_the_spelling_is_the_projects() -> None:
    for lang, text in _all_texts():
        assert not re.search(r"\b(AmoCRM|Amocrm|AMOCRM)\b", text), text
        assert not re.search(r"\bподключен\b", text), text  # подключён
        if lang == "en":
            assert not re.search("[\u0400-\u04ff]", text), text


def test_texts_escape_the_values_they_are_given() -> None:
    shown = Texts("en")("success.body", host="<b>acme</b>.amocrm.ru")
    assert "&lt;b&gt;acme&lt;/b&gt;.amocrm.ru" in shown
    assert "<strong>" in shown  # the catalogue's own markup stays
    assert Texts("xx").lang == "ru"
