"""Row validation: every odd upstream row gets a reason; good rows become page records."""

import random

import pytest

from civicband_pipelines.rows import MAX_ID_LENGTH, MAX_MEETING_LENGTH, PageRecord, Rejection, parse_row, parse_rows, storable_id

GOOD = {"id": "0f3a9c2e11b7", "meeting": "CityCouncil", "date": "2024-01-15", "page": 3, "text": "Roll call",
        "page_image": "/_agendas/CityCouncil/2024-01-15/3.png", "entities_json": None, "votes_json": "[]"}


def test_a_good_row_becomes_a_page_record():
    assert parse_row(GOOD) == PageRecord(
        upstream_id="0f3a9c2e11b7", meeting_name="CityCouncil", meeting_date="2024-01-15", page_number=3,
        text="Roll call", page_image="/_agendas/CityCouncil/2024-01-15/3.png", entities_json=None, votes_json="[]",
    )


@pytest.mark.parametrize(("change", "reason"), [
    ({"meeting": None}, "meeting is missing"),
    ({"meeting": "  "}, "meeting is missing"),
    ({"date": "2024-13-45"}, "date is not a YYYY-MM-DD date: '2024-13-45'"),
    ({"date": "TBD"}, "date is not a YYYY-MM-DD date: 'TBD'"),
    ({"date": "2024-1-5"}, "date is not"),
    ({"page": "abc"}, "page is not a positive integer: 'abc'"),
    ({"page": 0}, "page is not a positive integer: 0"),
    ({"page": True}, "page is not a positive integer"),
    ({"page": 2.5}, "page is not a positive integer"),
    ({"page": 2**31}, "page is not a positive integer"),
    ({"meeting": "City\x00Council"}, "id or meeting contains a NUL"),
    ({"id": "0f3a\x00"}, "id or meeting contains a NUL"),
    ({"id": None}, "id is missing"),
    ({"id": "x" * 300}, "id is longer than 255"),
    ({"text": 42}, "text is not text"),
    ({"id": "0f3a\ud800"}, "id or meeting contains an unpaired surrogate"),
    ({"meeting": "City\udfffCouncil"}, "id or meeting contains an unpaired surrogate"),
    ({"meeting": "M" * 501}, "meeting is longer than 500 characters"),
    ({"meeting": "\U0001F3DB" * 501}, "meeting is longer than 500 characters"),
])
def test_odd_rows_are_rejected_with_a_reason_and_the_raw_row(change, reason):
    rejection = parse_row(GOOD | change)
    assert isinstance(rejection, Rejection)
    assert rejection.reason.startswith(reason)
    assert '"meeting"' in rejection.raw


def test_the_longest_meeting_name_still_fits_postgresqls_unique_page_index(postgres_store):
    # The index (municipality, document_type, meeting_name, ...) refuses entries over ~2700 bytes,
    # and one such row would fail its whole batch's COPY on every run: the limit must hold in 4-byte UTF-8.
    municipality = ".".join(["a" * 49] * 4)  # near the store's 200-character limit
    rng = random.Random(0)  # random characters: PostgreSQL compresses index entries, repeats would fit easily
    meeting = "".join(chr(rng.randrange(0x10000, 0x110000)) for _ in range(MAX_MEETING_LENGTH))  # 4 bytes each
    record = parse_row(GOOD | {"meeting": meeting})
    sync = postgres_store.start_sync(municipality, "agenda", restart=False, run_id=None)
    postgres_store.write_batch(municipality, "agenda", sync, [record], [], None)
    assert [p["meeting_name"] for p in postgres_store.iter_pages(municipality, "agenda")] == [record.meeting_name]


def test_nul_characters_are_removed_and_empty_or_null_text_is_kept():
    assert parse_row(GOOD | {"text": "a\x00b"}).text == "ab"
    assert parse_row(GOOD | {"page_image": "/a\x00.png", "votes_json": {"v": "\x00"}}).page_image == "/a.png"
    assert "\x00" not in parse_row(GOOD | {"votes_json": "[\"\x00\"]"}).votes_json
    assert parse_row(GOOD | {"text": ""}).text == ""
    assert parse_row(GOOD | {"text": None}).text is None


def test_json_columns_given_as_objects_are_stored_as_json_text():
    assert parse_row(GOOD | {"entities_json": {"people": ["A"]}}).entities_json == '{"people": ["A"]}'


def test_a_row_that_is_not_an_object_is_rejected():
    assert isinstance(parse_row(["not", "a", "row"]), Rejection)


def test_a_page_of_rows_splits_into_records_and_rejections_in_order():
    records, rejections = parse_rows([GOOD, GOOD | {"page": 0}, "junk", GOOD | {"page": 4}])
    assert [r.page_number for r in records] == [3, 4]
    assert [r.reason.split(":")[0] for r in rejections] == ["page is not a positive integer", "row is not an object"]


def test_unpaired_surrogates_in_text_become_replacement_characters():
    record = parse_row(GOOD | {"text": "a\ud800b", "page_image": "/\udc00.png", "entities_json": {"k": "\ud83d"}})
    assert (record.text, record.page_image) == ("a\ufffdb", "/\ufffd.png")
    assert record.entities_json == '{"k": "\\ud83d"}', "JSON given as an object is dumped ASCII-only: nothing to replace"
    assert parse_row(GOOD | {"text": "paired \U0001F3DB fine"}).text == "paired \U0001F3DB fine"


def test_a_rejected_id_is_kept_as_the_store_can_hold_it():
    assert storable_id("0f3a9c2e11b7") == "0f3a9c2e11b7" and storable_id("ünï好~,&") == "ünï好~,&"
    assert storable_id("a\x00b") == "a\\u0000b" and storable_id("a\ud800") == "a\\ud800"
    assert storable_id("x" * 300) == "x" * MAX_ID_LENGTH
    assert parse_row(GOOD | {"id": "a\x00b"}).upstream_id == "a\\u0000b"


ROW_VARIANTS = [
    {}, {"text": None}, {"text": ""}, {"text": "a\x00b"}, {"text": "ünï\ud800"}, {"text": 42}, {"page_image": 7},
    {"entities_json": {"a": 1}}, {"votes_json": ["x"]}, {"votes_json": "\x00"}, {"id": ""}, {"id": 5}, {"id": "x" * 256},
    {"id": "x" * 255}, {"id": "ü~,&"}, {"meeting": " "}, {"meeting": "Ünïcødé"}, {"meeting": 3}, {"date": "2024-02-30"},
    {"date": "2024-01-15\n"}, {"date": "２０２４-01-15"}, {"date": 20240115}, {"page": 2**31 - 1}, {"page": 2**31},
    {"page": False}, {"page": 1.0}, {"page": "3"}, {"meeting": "M" * MAX_MEETING_LENGTH},
    {"meeting": "\U0001F3DB" * MAX_MEETING_LENGTH}, {"meeting": "M" * (MAX_MEETING_LENGTH + 1)},
    {"meeting": "\U0001F3DB" * (MAX_MEETING_LENGTH + 1)},
]


@pytest.mark.parametrize("change", ROW_VARIANTS, ids=lambda change: repr(change)[:60])
def test_parse_rows_fast_path_gives_exactly_what_parse_row_gives(change):
    for row in (GOOD | change, {k: v for k, v in (GOOD | change).items() if k != "votes_json"}):
        records, rejections = parse_rows([row])
        assert records + rejections == [parse_row(row)]
