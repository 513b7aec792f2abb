"""Phone and e-mail normalisation (amobridge.amo.phones): the finders' notion of "the same contact"."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from amobridge.amo.phones import (
    normalize_email,
    normalize_phone,
    phone_search_terms,
    phones_match,
)


@pytest.mark.parametrize(
    "raw",
    [
        "+7 (912) 345-67-89",
        "+79123456789",
        "8 912 345 67 89",
        "89123456789",
        "8(912)3456789",
        "7 912 3456789",
        "79123456789",
        "9123456789",
        "  +7-912-345-67-89  ",
        "+7 912 345 67 89 доб. 12",
        "tel:+79123456789",
    ],
)
def test_russian_forms_normalise_to_one_e164(raw: str) -> None:
    assert normalize_phone(raw) == "+79123456789"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+380 44 123 4567", "+380441234567"),
        ("+380 (44) 123-45-67", "+380441234567"),
        ("380441234567", "+380441234567"),  # digits of a foreign number typed without "+"
        ("00 380 44 123 4567", "+380441234567"),  # "00" international prefix
        ("+1 (202) 555-0143", "+12025550143"),
        ("+49 30 901820", "+4930901820"),
        ("8 (800) 555-35-35", "+78005553535"),
        ("+7 000 000 00 00", "+70000000000"),  # "+" and the right length: kept though unassigned
    ],
)
def test_other_countries_and_ranges(raw: str, expected: str) -> None:
    assert normalize_phone(raw) == expected


def test_default_region_decides_numbers_without_plus() -> None:
    assert normalize_phone("044 123 4567", default_region="UA") == "+380441234567"
    assert normalize_phone("(202) 555-0143", default_region="us") == "+12025550143"
    assert normalize_phone("8 912 345 67 89", default_region="RU") == "+79123456789"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "+",
        "abc",
        "phone",
        "123",
        "12-34",
        "1234567890",  # no "+", valid nowhere
        "8 (912) 345-67-8",  # a digit short: no guess
        "+999 123",
        "89123456789, 89123456780",
        "1" * 200,
        None,
    ],
)
def test_garbage_is_none(raw: str | None) -> None:
    assert normalize_phone(raw) is None


def test_non_string_is_none() -> None:
    assert normalize_phone(79123456789) is None  # type: ignore[arg-type]


def test_phones_match() -> None:
    assert phones_match("+7 (912) 345-67-89", "89123456789")
    assert phones_match("8 912 345 67 89", "7 912 3456789")
    assert not phones_match("+79123456789", "+79123456780")
    assert not phones_match("+380441234567", "+79123456789")
    assert not phones_match("abc", "abc")  # not phones: never "the same phone"
    assert not phones_match(None, None)
    assert not phones_match("89123456789", "")


def test_search_terms_cover_the_usual_renderings() -> None:
    assert phone_search_terms("8 912 345 67 89") == [
        "9123456789",
        "(912) 345-67-89",
        "912 345-67-89",
        "912 345 67 89",
        "345-67-89",
        "8 912 345 67 89",
    ]
    # duplicates collapse, order kept
    assert phone_search_terms("9123456789") == [
        "9123456789",
        "(912) 345-67-89",
        "912 345-67-89",
        "912 345 67 89",
        "345-67-89",
    ]
    assert phone_search_terms("+380 44 123 4567") == [
        "441234567",
        "044 123 4567",
        "44 123 4567",
        "123-45-67",
        "+380 44 123 4567",
    ]
    assert "" not in phone_search_terms("+49 30 901820")
    assert phone_search_terms("garbage") == []


@pytest.mark.parametrize(
    "stored",
    ["+7 (912) 345-67-89", "8 (912) 345-67-89", "89123456789", "+79123456789", "8 912 345 67 89",
     "+7 912 345-67-89", "7 912 345 67 89", "9123456789", "8-912-345-67-89", "+7(912)345-67-89"],
)  # fmt: skip
def test_some_term_is_a_substring_of_each_usual_rendering(stored: str) -> None:
    """What a substring search (the sandbox's) needs to find a phone however it was typed."""
    for typed in ("89123456789", "+7 (912) 345-67-89", "7 912 3456789"):
        assert any(term in stored for term in phone_search_terms(typed))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ivan@Mail.RU", "ivan@mail.ru"),
        ("  ivan.petrov+crm@example.co.uk \n", "ivan.petrov+crm@example.co.uk"),
        ("MAILTO:Ivan@Mail.ru", "ivan@mail.ru"),
        ("иван@почта.рф", "иван@почта.рф"),
        ("x@xn--80a1acny.xn--p1ai", "x@xn--80a1acny.xn--p1ai"),
    ],
)
def test_normalize_email(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "  ", "ivan", "ivan@", "@mail.ru", "ivan@mail", "iv an@mail.ru", "a@@b.ru", "a@b..ru",
     "a@-b.ru", "a@b.ru.", "a@b.1", "a" * 250 + "@b.ru", None],
)  # fmt: skip
def test_invalid_email_is_none(raw: str | None) -> None:
    assert normalize_email(raw) is None


# Russian mobile numbers: 9xx plus seven digits. Rendered in the ways people type them.
_ru_mobiles = st.builds(
    lambda code, rest: f"9{code:02d}{rest:07d}",
    st.integers(min_value=0, max_value=99),
    st.integers(min_value=0, max_value=9_999_999),
)


def _render(national: str, style: int) -> str:
    a, b, c, d = national[:3], national[3:6], national[6:8], national[8:]
    return [
        f"+7 ({a}) {b}-{c}-{d}",
        f"8 {a} {b} {c} {d}",
        f"8{national}",
        f"7 {a} {b}{c}{d}",
        f"+7{national}",
        f" +7-{a}-{b}-{c}-{d} ",
        f"8({a}){b}{c}{d}",
    ][style]


@given(_ru_mobiles, st.integers(min_value=0, max_value=6), st.integers(min_value=0, max_value=6))
def test_every_rendering_of_a_valid_number_matches(national: str, one: int, other: int) -> None:
    if not phonenumbers.is_valid_number(phonenumbers.parse("+7" + national)):
        return  # an unassigned 9xx block: nothing to promise
    first, second = _render(national, one), _render(national, other)
    assert normalize_phone(first) == "+7" + national
    assert phones_match(first, second)
    assert national in phone_search_terms(first)


@given(st.text(max_size=80), st.sampled_from(["RU", "UA", "US", "", "ZZ", "xx"]))
def test_any_text_gives_e164_or_none(raw: str, region: str) -> None:
    result = normalize_phone(raw, default_region=region)
    if result is not None:
        assert result.startswith("+")
        assert result[1:].isdigit()
        assert normalize_phone(result) == result  # idempotent
    for term in phone_search_terms(raw, default_region=region):
        assert term


@given(st.text(max_size=300))
def test_any_text_gives_lowercase_email_or_none(raw: str) -> None:
    result = normalize_email(raw)
    if result is not None:
        assert result == result.strip().lower()
        assert result.count("@") == 1
        assert normalize_email(result) == result
