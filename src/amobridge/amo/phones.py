"""Phone and e-mail normalisation, so a lead can be found by how a person typed their contact.

amoCRM stores phones exactly as entered ("+7 (912) 345-67-89", "8 912 345 67 89", "89123456789")
and its ``query`` search is not documented to normalise them, so amobridge
compares phones itself, in E.164, using Google's libphonenumber (the ``phonenumbers`` package)
rather than hand-written digit rules that break on the first foreign number.
"""

from __future__ import annotations

import re

import phonenumbers

__all__ = [
    "normalize_email",
    "normalize_phone",
    "phone_search_terms",
    "phones_match",
]

# Longer than any phone number with an extension, short enough that libphonenumber's work is bounded.
_MAX_PHONE_INPUT = 64
_MAX_EMAIL_LENGTH = 254  # RFC 5321: the longest address a mail server must accept
_NON_DIGITS = re.compile(r"\D+")
# Deliberately simple: one "@", a non-empty local part, a dotted domain of letters, digits and
# hyphens, no whitespace. Full RFC 5322 is neither needed nor what amoCRM's own form accepts.
_EMAIL = re.compile(
    r"^[^@\s]+@(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_](?:[\w-]*[^\W_])?$",
)


def _parse(raw: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None


def _e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_phone(raw: str | None, default_region: str = "RU") -> str | None:
    """``raw`` as an E.164 string (``"+79123456789"``), or None when it is not a phone number.

    A number without ``+`` is read as dialled in ``default_region`` (in Russia "8 912 …" and
    "7 912 …" both mean +7 912 …). When that gives no valid number, the digits are tried as a full
    international number ("380441234567" → +380441234567, "00 380 …" likewise). A number written
    with ``+`` and of the right length is accepted even outside the ranges libphonenumber knows
    (new or test ranges), so a customer's phone is not dropped because the metadata is old.
    Extensions ("доб. 12", "ext. 12") are not part of E.164 and are dropped.
    """
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    if not text or len(text) > _MAX_PHONE_INPUT:
        return None
    region = default_region.upper() if default_region else None
    local = _parse(text, region)
    if local is not None and phonenumbers.is_valid_number(local):
        return _e164(local)
    if not text.startswith("+"):
        digits = _NON_DIGITS.sub("", text)
        # "00" is the international call prefix in most of the world (ITU-T E.164).
        for international in (digits, digits.removeprefix("00")):
            candidate = _parse("+" + international, None) if international else None
            if candidate is not None and phonenumbers.is_valid_number(candidate):
                return _e164(candidate)
    # Written with "+", the country is certain: accept a number of the right length even outside
    # the ranges libphonenumber knows (new or test ranges). Without "+", a number that is valid
    # nowhere is more likely mistyped ("8 (912) 345-67-8") than new, and guessing would invent one.
    if (
        text.startswith("+")
        and local is not None
        and phonenumbers.is_possible_number(local)
        and local.country_code is not None
        and phonenumbers.region_code_for_country_code(local.country_code) != "ZZ"
    ):
        return _e164(local)
    return None


def phones_match(a: str | None, b: str | None, default_region: str = "RU") -> bool:
    """True when ``a`` and ``b`` are the same phone number however each was written.

    Two values that are not phone numbers never match (not even each other).
    """
    left = normalize_phone(a, default_region)
    return left is not None and left == normalize_phone(b, default_region)


def phone_search_terms(raw: str, default_region: str = "RU") -> list[str]:
    """Strings to pass as amoCRM's ``query`` when searching contacts by ``raw``, best first.

    amoCRM's matching of phones is undocumented and a phone is stored as it
    was typed, so a finder tries the forms a stored value most likely contains and then keeps only
    the contacts whose phones :func:`phones_match`:

    - the national number's digits, ``"9123456789"`` (in "89123456789", "+79123456789", …);
    - the national format without the trunk prefix, ``"(912) 345-67-89"`` (in "+7 (912) 345-67-89",
      "8 (912) 345-67-89");
    - the international format without the country code, ``"912 345-67-89"``, and the same with
      spaces, ``"912 345 67 89"`` (in "+7 912 345-67-89", "8 912 345 67 89");
    - the last seven digits grouped as across the former USSR, ``"345-67-89"`` (in
      "+380 (44) 345-67-89", "8-912-345-67-89");
    - the input as typed (which covers E.164 when that is how it came).

    Empty when ``raw`` is not a phone number.
    """
    e164 = normalize_phone(raw, default_region)
    if e164 is None:
        return []
    number = phonenumbers.parse(e164, None)
    national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    region = phonenumbers.region_code_for_number(number)
    trunk = phonenumbers.ndd_prefix_for_region(region, True) if region else None
    if trunk and national.startswith(trunk + " "):
        national = national[len(trunk) + 1 :]
    international = (
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        .removeprefix(f"+{number.country_code}")
        .strip()
    )
    digits = str(phonenumbers.national_significant_number(number))
    tail = f"{digits[-7:-4]}-{digits[-4:-2]}-{digits[-2:]}" if len(digits) >= 9 else ""
    terms = [digits, national, international, international.replace("-", " "), tail, raw.strip()]
    return [term for term in dict.fromkeys(terms) if term]


def normalize_email(raw: str | None) -> str | None:
    """``raw`` stripped and lower-cased, or None when it is not an e-mail address.

    amoCRM compares nothing for us; lower-casing the whole address (local part included) is what
    every mail provider our users meet does in practice, and it is what makes "Ivan@Mail.ru" and
    "ivan@mail.ru" one customer.
    """
    if not isinstance(raw, str):
        return None
    text = raw.strip().lower()
    if text.startswith("mailto:"):
        text = text.removeprefix("mailto:").strip()
    if not text or len(text) > _MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(text):
        return None
    return text
