"""The import's page cursor: the time bound moves to the last entity's time, and the page number
grows only while whole pages share one time, so every entity is read once, however many share
a second."""

from __future__ import annotations

from amobridge.sync.import_tasks import PAGE_LIMIT, Cursor, advance

START = Cursor(None, 1, frozenset())


def _page(first_id: int, times: list[int]) -> list[tuple[int, int | None]]:
    return [(first_id + i, at) for i, at in enumerate(times)]


def test_the_last_page_ends_the_walk() -> None:
    assert advance(START, _page(1, [10, 11]), has_next=False) is None
    assert advance(START, [], has_next=True) is None


def test_the_bound_moves_to_the_last_time_remembering_who_was_there() -> None:
    items = _page(1, [10] * 248 + [12, 12])
    after = advance(START, items, has_next=True)
    assert after == Cursor(12, 1, frozenset({249, 250}))


def test_a_whole_page_at_one_new_time_goes_on_with_page_two() -> None:
    items = _page(1, [10] * PAGE_LIMIT)
    after = advance(START, items, has_next=True)
    assert after == Cursor(10, 2, frozenset(range(1, PAGE_LIMIT + 1)))
    # The next page is still at that time: only the page number grows.
    more = advance(after, _page(PAGE_LIMIT + 1, [10] * PAGE_LIMIT), has_next=True)
    assert more == Cursor(10, 3, after.seen)
    # Then the time moves on: back to page 1 of the new bound.
    last = advance(more, _page(2 * PAGE_LIMIT + 1, [10] * 100 + [11] * 150), has_next=True)
    assert last is not None
    assert (last.bound, last.page, len(last.seen)) == (11, 1, 150)


def test_600_entities_of_one_second_are_three_pages() -> None:
    cursor: Cursor | None = START
    pages = 0
    served = list(range(1, 601))
    read: list[int] = []
    while cursor is not None:
        # What the API serves for this cursor: from the bound, 250 a page (all at second 7).
        offset = (cursor.page - 1) * PAGE_LIMIT
        chunk = served[offset : offset + PAGE_LIMIT]
        pages += 1
        read += [i for i in chunk if i not in cursor.seen]
        cursor = advance(
            cursor, [(i, 7) for i in chunk], has_next=offset + PAGE_LIMIT < len(served)
        )
    assert pages == 3
    assert read == served


def test_entities_without_a_time_are_paged_by_number() -> None:
    after = advance(Cursor(None, 4, frozenset()), _page(1, [None, None]), has_next=True)
    assert after == Cursor(None, 5, frozenset())
