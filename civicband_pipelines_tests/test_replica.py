"""The local civic.band replica, over real HTTP: Datasette 1.0a19 behind the fault proxy."""

import datetime as dt
import json
import sqlite3

import httpx
import pytest

from civicband_pipelines.replica.faults import FAULT_KINDS
from civicband_pipelines.replica.generate import (
    ODD_ROW_REASONS,
    TABLES,
    add_documents,
    build_municipality,
    delete_documents,
    odd_rows_for,
    page_id,
    reocr_pages,
)

from .replica_process import running_replica

COLUMNS = {"id", "meeting", "date", "page", "text", "page_image", "entities_json", "votes_json"}


@pytest.fixture(scope="module")
def own_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("replica")
    build_municipality(root, "oak.ca", documents_per_type=8, pages_per_document=(2, 6),
                       seed=1, odd_rows=True)
    build_municipality(root, "big.ca", documents_per_type=201, pages_per_document=(50, 50),
                       seed=2, text_chars=300)
    return root


@pytest.fixture(scope="module")
def own_replica(own_root):
    # Its own process (not the session replica): these tests exercise starting and stopping it.
    with running_replica(own_root, proxy=True) as running:
        yield running


@pytest.fixture
def oak(own_replica):
    own_replica.clear_faults()
    with httpx.Client(base_url=own_replica.base_url_template.format(subdomain="oak.ca"),
                      timeout=5) as client:
        yield client


def db_ids(path, table):
    with sqlite3.connect(path) as conn:
        return sorted(r[0] for r in conn.execute(f"SELECT id FROM {table}"))


def page_through(client, table, size, **params):
    ids, tokens, next_token = [], [], None
    while True:
        query = {"_size": size, **params, **({"_next": next_token} if next_token else {})}
        response = client.get(f"/meetings/{table}.json", params=query)
        assert response.status_code == 200, response.text
        data = response.json()
        ids += [row["id"] for row in data["rows"]]
        next_token = data["next"]
        if next_token is None:
            return ids, tokens
        tokens.append(next_token)


def count(client, table):
    response = client.get("/meetings/-/query.json", params={"sql": f"select count(*) as n from {table}"})
    assert response.status_code == 200, response.text
    return response.json()["rows"][0]["n"]


def test_page_shape(oak):
    response = oak.get("/meetings/agendas.json", params={"_size": 3})
    data = response.json()
    assert response.status_code == 200
    assert set(data) == {"ok", "next", "rows", "truncated"}
    assert data["ok"] is True and data["truncated"] is False and len(data["rows"]) == 3
    assert set(data["rows"][0]) == COLUMNS
    row = data["rows"][0]
    if row["meeting"] != "SpecialSession":
        assert row["id"] == page_id("agenda", row["meeting"], row["date"], row["page"], row["text"])
        assert row["page_image"] == f"/_agendas/{row['meeting']}/{row['date']}/{row['page']}.png"


@pytest.mark.parametrize("kind", TABLES)
def test_paging_yields_every_row_once_including_special_ids(oak, own_root, kind):
    table = TABLES[kind]
    expected = db_ids(own_root / "oak.ca" / "meetings.db", table)
    specials = [r.id for r in odd_rows_for("oak.ca", kind) if r.reason.startswith("url_special")]
    for special in specials:
        # a page size that ends the first page exactly on the special id
        ids, tokens = page_through(oak, table, expected.index(special) + 1)
        assert ids == expected
        assert any(c in tokens[0] for c in "~,&+%")  # a tilde-encoded key, sent back as given
    assert page_through(oak, table, 7)[0] == expected


def test_default_size_and_size_limit(own_replica):
    with httpx.Client(base_url=own_replica.base_url_template.format(subdomain="big.ca")) as client:
        assert len(client.get("/meetings/agendas.json").json()["rows"]) == 100
        assert len(client.get("/meetings/agendas.json", params={"_size": 1000}).json()["rows"]) == 1000
        response = client.get("/meetings/agendas.json", params={"_size": 1001})
    assert response.status_code == 400
    assert response.json()["ok"] is False and "_size must be <= 1000" in response.json()["error"]


def test_exact_count_comes_from_sql_not_extra_count(own_replica, own_root):
    with httpx.Client(base_url=own_replica.base_url_template.format(subdomain="big.ca")) as client:
        assert count(client, "agendas") == len(db_ids(own_root / "big.ca" / "meetings.db", "agendas"))
        assert count(client, "agendas") == 10050
        extra = client.get("/meetings/agendas.json", params={"_size": 1, "_extra": "count"})
        redirect = client.get("/meetings.json", params={"sql": "select 1"})
    assert extra.json()["count"] == 10001  # Datasette caps it
    assert redirect.status_code == 302
    assert redirect.headers["location"].startswith("/big.ca/meetings/-/query.json?sql=")


def test_unknown_subdomain_redirects_to_civic_band(own_replica):
    base = own_replica.base_url_template.format(subdomain="nowhere.zz")
    response = httpx.get(base + "/meetings/agendas.json")
    assert response.status_code == 302
    assert response.headers["location"] == "https://civic.band/"
    assert response.headers["content-type"].startswith("text/html")


def test_odd_rows_come_back_as_stored(oak):
    rows = oak.get("/meetings/agendas.json", params={"meeting__exact": "SpecialSession"}).json()["rows"]
    by_id = {row["id"]: row for row in rows}
    odd = {r.reason: r for r in odd_rows_for("oak.ca", "agenda")}
    assert by_id[odd["page_not_number"].id]["page"] == "abc"
    assert by_id[odd["tbd_date"].id]["date"] == "TBD"
    assert "\x00" in by_id[odd["nul_in_text"].id]["text"]
    assert "\x00" in odd["nul_in_id"].id and odd["nul_in_id"].id in by_id
    assert by_id[odd["null_text"].id]["text"] is None
    assert by_id[odd["url_special_id"].id]["text"]
    assert {r.reason for r in odd.values() if not r.accepted} == {
        "null_meeting", "bad_date", "tbd_date", "page_not_number", "nul_in_id"}
    assert set(odd) == set(ODD_ROW_REASONS)


def test_new_and_rebuilt_municipalities_are_served_live(own_replica, own_root):
    base = own_replica.base_url_template.format(subdomain="late.ca")
    with httpx.Client(base_url=base) as client:
        assert client.get("/meetings/agendas.json").status_code == 302
        build_municipality(own_root, "late.ca", documents_per_type=2, pages_per_document=(3, 3))
        assert count(client, "agendas") == 6
        build_municipality(own_root, "late.ca", documents_per_type=3, pages_per_document=(4, 4), seed=5)
        assert count(client, "agendas") == 12  # replaced file, not the old inode


def test_mutations_change_ids_as_upstream_does(own_replica, own_root):
    # Dates are drawn around `today`: fixed, so the mutations pick the same pages whatever the date.
    db = build_municipality(own_root, "mut.ca", documents_per_type=6, pages_per_document=(3, 5), seed=3,
                            today=dt.date(2026, 12, 1))
    with httpx.Client(base_url=own_replica.base_url_template.format(subdomain="mut.ca")) as client:
        before = set(page_through(client, "minutes", 1000)[0])
        reocr = reocr_pages(db, "minutes", 3, seed=1)
        deleted = delete_documents(db, "minutes", 1, seed=1)
        added = add_documents(db, "minutes", 2, pages=(2, 3), seed=1)
        after = set(page_through(client, "minutes", 1000)[0])
    assert len(reocr.removed) == len(reocr.added) == 3 and not set(reocr.added) & before
    expected = (before - set(reocr.removed)) | set(reocr.added)
    assert after == (expected - set(deleted.removed)) | set(added.added)
    assert len(deleted.documents) == 1 and deleted.removed
    assert len(added.documents) == 2 and 4 <= len(added.added) <= 6
    with sqlite3.connect(db) as conn:
        kept = [(new, document) for new, document in zip(reocr.added, reocr.documents) if new not in deleted.removed]
        assert kept, "a re-OCR'd page whose document was not deleted afterwards"
        for new, (meeting, date) in kept:
            row = conn.execute("SELECT meeting, date FROM minutes WHERE id = ?", (new,)).fetchone()
            assert row == (meeting, date)
        left = conn.execute("SELECT count(*) FROM minutes WHERE meeting = ? AND date = ?",
                            deleted.documents[0]).fetchone()[0]
    assert left == 0
    recent = (dt.date.today() - dt.timedelta(days=30)).isoformat()
    assert all(date >= recent for _, date in added.documents)


def test_proxy_passes_through_and_counts(own_replica, oak):
    own_replica.reset_stats()
    ids, tokens = page_through(oak, "agendas", 10)
    stats = own_replica.fault_stats()
    assert stats["requests"] == stats["forwarded"] == len(tokens) + 1
    assert stats["table_pages"] == stats["table_pages_ok"] == len(tokens) + 1
    assert stats["paths"] == {"/oak.ca/meetings/agendas.json": len(tokens) + 1}
    assert stats["faults_total"] == 0
    own_replica.reset_stats()
    assert own_replica.fault_stats()["requests"] == 0


def _fault_response(replica, kind, timeout=10.0, **plan):
    replica.set_faults(1.0, [kind], **plan)
    try:
        with httpx.Client(base_url=replica.base_url_template.format(subdomain="oak.ca"),
                          timeout=timeout) as client:
            return client.get("/meetings/agendas.json", params={"_size": 50})
    finally:
        replica.clear_faults()


@pytest.mark.parametrize("kind,status", [("error_500", 500), ("error_503", 503), ("rate_429", 429),
                                         ("rate_402", 402), ("invalid_body", 200)])
def test_proxy_fault_answers(own_replica, kind, status):
    response = _fault_response(own_replica, kind)
    assert response.status_code == status
    if kind == "rate_429":
        assert response.headers["retry-after"] == "1"
    if kind == "rate_402":
        assert response.json()["error"] == "rate_limit_exceeded"
        assert "retry-after" not in response.headers
    if kind in ("error_500", "invalid_body"):
        with pytest.raises(json.JSONDecodeError):
            response.json()


@pytest.mark.parametrize("kind,error", [("drop", httpx.RemoteProtocolError),
                                        ("truncate", httpx.RemoteProtocolError),
                                        ("slow", httpx.ReadTimeout)])
def test_proxy_transport_faults(own_replica, kind, error):
    own_replica.reset_stats()
    with pytest.raises(error):
        # Only the slow answer outlasts the timeout; the others fail at once, however loaded the machine.
        _fault_response(own_replica, kind, timeout=1.0, slow_seconds=4.0)
    stats = own_replica.fault_stats()
    assert stats["faults"] == {kind: 1}
    assert stats["table_page_requests"][0]["fault"] == kind
    assert set(FAULT_KINDS) >= set(stats["plan"]["kinds"])


def test_proxy_broken_bodies(own_replica):
    assert "next" not in _fault_response(own_replica, "no_next").json()
    rows = _fault_response(own_replica, "array_rows").json()["rows"]
    assert rows and all(isinstance(row, list) for row in rows)
    assert _fault_response(own_replica, "stuck_next").json()["next"] == ""  # the first page: no cursor
    with pytest.raises(httpx.DecodingError):
        _fault_response(own_replica, "bad_gzip")


def test_proxy_rejects_a_bad_plan(own_replica):
    response = httpx.post(own_replica.control_url, json={"rate": 1, "kinds": ["nope"]})
    assert response.status_code == 400


def test_service_secret_caps_size_without_header(own_root):
    with running_replica(own_root, proxy=False, service_secret="s3cret") as replica:
        assert replica.proxy_url is None
        url = replica.base_url_template.format(subdomain="big.ca") + "/meetings/agendas.json"
        public = httpx.get(url, params={"_size": 1000}).json()
        trusted = httpx.get(url, params={"_size": 1000}, headers={"X-Service-Secret": "s3cret"}).json()
        assert len(public["rows"]) == 100 and public["next"]
        assert len(trusted["rows"]) == 1000
        process = replica.process
    assert process.returncode == 0  # SIGTERM stops it cleanly
