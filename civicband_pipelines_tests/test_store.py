"""Batch writes of the store, on SQLite and PostgreSQL: what goes in comes back byte for byte, and
every batch says exactly what it created, updated and left unchanged."""

from civicband_pipelines.rows import PageRecord

M, D = "oakland.ca", "agenda"

TRICKY_TEXTS = [
    "back\\slash \\N \\t literally", "tab\there", "new\nline", "carriage\r\nreturn", "\\", "\\N",
    "", None, "ünïcødé ✓ 🏛️", "quote ' and \" and , ; |", "x" * 20_000 + "\nend",
]


def page(n: int, text: str | None = "text", upstream_id: str | None = None, **fields) -> PageRecord:
    return PageRecord(upstream_id or f"id-{n}", "CityCouncil", "2024-01-15", n, text, f"/p/{n}.png", None, "[]")._replace(**fields)


def write(store, records, next_cursor=None):
    start = store.start_sync(M, D, restart=True, run_id=None)
    return store.write_batch(M, D, start, records, [], next_cursor)


def local(store) -> dict[int, tuple]:
    return {p["page_number"]: tuple(p[name] for name in PageRecord._fields) for p in store.iter_pages(M, D)}


def test_every_character_round_trips_exactly(store):
    records = [page(n, text, page_image=text, entities_json=text) for n, text in enumerate(TRICKY_TEXTS, start=1)]
    write(store, records)
    stored = local(store)
    for record in records:
        assert stored[record.page_number] == record._replace(meeting_date=stored[record.page_number][2]), record.text
        assert str(stored[record.page_number][2]) == record.meeting_date


def test_a_batch_reports_created_updated_and_unchanged_exactly(store):
    counts = write(store, [page(1), page(2), page(3)], next_cursor="c1")
    assert (counts.created, counts.updated, counts.unchanged) == (3, 0, 0)
    before = {p["page_number"]: p["updated_at"] for p in store.iter_pages(M, D)}

    counts = write(store, [page(1), page(2, "re-OCR'd", upstream_id="id-2b"), page(3, votes_json='["yes"]'), page(4)])
    assert (counts.created, counts.updated, counts.unchanged) == (1, 2, 1)
    after = {p["page_number"]: p for p in store.iter_pages(M, D)}
    assert after[1]["updated_at"] == before[1], "an unchanged page keeps its updated_at"
    assert after[2]["updated_at"] > before[2] and after[2]["text"] == "re-OCR'd" and after[2]["upstream_id"] == "id-2b"
    assert after[3]["votes_json"] == '["yes"]'


def test_the_later_of_two_rows_with_one_key_wins(store):
    counts = write(store, [page(1, "first", upstream_id="a"), page(1, "second", upstream_id="b")])
    assert (counts.created, counts.updated, counts.unchanged) == (1, 0, 0)
    assert local(store)[1][4] == "second"
