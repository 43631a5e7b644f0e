"""Plate formats and the well grid of the plate map."""

from __future__ import annotations

import pytest

from conductor.web import platefmt


@pytest.mark.parametrize(
    ("wells", "expected"),
    [
        (["A1", "B3"], 6),
        (["A1", "B4"], 24),
        (["D6"], 24),
        (["E1"], 96),
        (["H12", "A01"], 96),
        (["I1"], 384),
        (["A13"], 384),
        (["P24"], 384),
    ],
)
def test_smallest_format_holding_every_well(wells: list[str], expected: int) -> None:
    assert platefmt.plate_format(wells) == expected


def test_requested_format_only_when_the_wells_fit() -> None:
    assert platefmt.plate_format(["A1"], 384) == 384
    assert platefmt.plate_format(["H12"], 24) == 96


def test_grid_places_wells_and_keeps_odd_names_apart() -> None:
    headers, rows, outside = platefmt.grid(["A01", "B2", "7", "Q1"], {"A01": "failed"}, 6)
    assert headers == ["1", "2", "3"]
    assert [letter for letter, _ in rows] == ["A", "B"]
    a1, b2 = rows[0][1][0], rows[1][1][1]
    assert (a1.well, a1.status, a1.letter) == ("A01", "failed", "F")
    assert (b2.well, b2.status, b2.letter) == ("B2", None, "·")
    assert rows[0][1][1].well is None
    assert outside == ["7", "Q1"]
    assert {platefmt.Cell("x", "x", s).letter for s in platefmt.STATUS_LETTER} == set("DRFSMN")


def test_grid_body_links_each_well_and_escapes_names() -> None:
    from conductor.web.platemap import grid_body

    _, rows, _ = platefmt.grid(["A1", "B2"], {"A1": "done", "B2": "stale"}, 6)
    body = str(grid_body(3, "P 1&<x>", rows))
    assert body.count("<tr>") == 2 and body.count("<td") == 6
    href = "/ui/projects/3/plates/P%201%26%3Cx%3E/wells/A1"
    assert (
        f'<td class="st-done"><a href="{href}" title="A1: done" aria-label="A1: done">D</a>' in body
    )
    assert 'aria-label="B2: stale">S</a>' in body
    assert '<td class="st-none" title="A2: no images"><span class="sr-only">A2: no images' in body
