"""The update webhook receiver, over real HTTP against a real store."""

import contextlib
import json
import threading
import time

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from civicband_pipelines import webhooks
from civicband_pipelines.store import MeetingStore

SECRET = "s3cret-token"
AUTH = {"Authorization": f"Bearer {SECRET}"}
OAKLAND = {
    "name": "Oakland", "state": "CA", "country": "US", "kind": "city", "pages": 150,
    "last_updated": "2024-01-15", "latitude": 37.8, "longitude": -122.27, "popup_data": {"population": 440000},
}


@contextlib.contextmanager
def running(app):
    """The app served by uvicorn on a free loopback port, in a background thread."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("webhook server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def wh_store(tmp_path):
    store = MeetingStore(f"sqlite:///{tmp_path}/m.db")
    yield store
    store.dispose()


@pytest.fixture
def http(wh_store):
    with running(webhooks.make_app(wh_store, SECRET, max_body_bytes=4096)) as client:
        yield client


def _with_raw(field, raw_json):
    """OAKLAND with `field` set to JSON text that json.dumps would not write."""
    return json.dumps({k: v for k, v in OAKLAND.items() if k != field})[:-1] + f', "{field}": {raw_json}}}'


def send(http, subdomain="oakland.ca", body=None, method="PUT", headers=AUTH, **kwargs):
    content = kwargs.pop("content", None)
    if content is None:
        content = json.dumps(OAKLAND if body is None else body)
    return http.request(method, f"/munis/api/update/{subdomain}/", content=content, headers=headers, **kwargs)


def assert_nothing_stored(store):
    assert store.webhook_events_after(0) == []
    assert store.municipality_subdomains() == []


def test_created_then_updated(http, wh_store):
    first = send(http)
    assert first.status_code == 201
    reply = first.json()
    assert reply["action"] == "created"
    assert {k: reply[k] for k in OAKLAND} == OAKLAND  # popup_data comes back as an object
    assert reply["subdomain"] == "oakland.ca"
    assert isinstance(reply["created_at"], str) and isinstance(reply["updated_at"], str)

    second = send(http, body=OAKLAND | {"pages": 175, "last_updated": "2024-01-20"}, method="POST")
    assert second.status_code == 200
    assert second.json()["action"] == "updated"
    assert (second.json()["pages"], second.json()["last_updated"], second.json()["name"]) == (175, "2024-01-20", "Oakland")

    assert wh_store.municipality_subdomains() == ["oakland.ca"]
    events = wh_store.webhook_events_after(0)
    assert [(e["subdomain"], e["action"]) for e in events] == [("oakland.ca", "created"), ("oakland.ca", "updated")]
    assert json.loads(events[1]["payload"])["pages"] == 175


def test_popup_data_is_stored_as_json_text_that_reads_as_sent(http, wh_store):
    popup = {"motto": "São Paulo — Cañon 東京", "tags": ["ü"]}
    assert send(http, "saopaulo.br", OAKLAND | {"popup_data": popup}).status_code == 201
    with wh_store.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT popup_data FROM municipalities WHERE subdomain = 'saopaulo.br'")).scalar()
    assert stored == json.dumps(popup, ensure_ascii=False)  # readable to anyone querying the table
    assert json.loads(stored) == popup


@pytest.mark.parametrize("method", ["PUT", "POST"])
@pytest.mark.parametrize("path", ["/munis/api/update/oakland.ca/", "/munis/api/update/oakland.ca"])
@pytest.mark.parametrize("authorization", [f"Bearer {SECRET}", f"bearer {SECRET}", SECRET])
def test_methods_paths_and_token_forms(http, wh_store, method, path, authorization):
    response = http.request(method, path, json=OAKLAND, headers={"Authorization": authorization})
    assert response.status_code == 201, response.text
    assert wh_store.municipality_subdomains() == ["oakland.ca"]


def test_minimal_body_with_nulls(http, wh_store):
    body = {"name": "Alameda", "last_updated": None, "popup_data": None, "state": None}
    response = send(http, "alameda.ca", body)
    assert response.status_code == 201
    assert response.json()["popup_data"] is None and response.json()["last_updated"] is None


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "wrong"}, {"Authorization": "Bearer"},
     {"Authorization": f"Bearer {SECRET[:-1]}"}, {"Authorization": f"Basic {SECRET}"}, {"Authorization": ""}],
)
def test_wrong_or_missing_token_is_401_and_stores_nothing(http, wh_store, headers):
    response = send(http, headers=headers)
    assert response.status_code == 401
    assert "error" in response.json()
    assert_nothing_stored(wh_store)


def test_auth_is_checked_before_the_body(http, wh_store):
    assert send(http, content=b"{not json", headers={}).status_code == 401
    assert send(http, content=b"x" * 10_000, headers={}).status_code == 401  # not 413
    assert send(http, "Oakland.CA", headers={}).status_code == 401
    assert_nothing_stored(wh_store)


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"{not json", None),
        (b"", None),
        (b"\xff\xfe{", None),
        (b'{"name": "X", "latitude": NaN}', None),
        (b"[" * 2000 + b"]" * 2000, None),
        (json.dumps([OAKLAND]), None),
        (json.dumps("Oakland"), None),
        (json.dumps(OAKLAND | {"name": None}), "name"),
        (json.dumps({k: v for k, v in OAKLAND.items() if k != "name"}), "name"),
        (json.dumps(OAKLAND | {"name": ""}), "name"),
        (json.dumps(OAKLAND | {"name": "  "}), "name"),
        (json.dumps(OAKLAND | {"name": 7}), "name"),
        (json.dumps(OAKLAND | {"name": "a\x00b"}), "name"),
        (b'{"name": "\\ud800"}', "name"),
        (json.dumps(OAKLAND | {"state": 5}), "state"),
        (json.dumps(OAKLAND | {"pages": "many"}), "pages"),
        (json.dumps(OAKLAND | {"pages": True}), "pages"),
        (json.dumps(OAKLAND | {"pages": -1}), "pages"),
        (json.dumps(OAKLAND | {"pages": 1.5}), "pages"),
        (json.dumps(OAKLAND | {"pages": 2**64}), "pages"),
        (json.dumps(OAKLAND | {"latitude": 91}), "latitude"),
        (json.dumps(OAKLAND | {"latitude": True}), "latitude"),
        (json.dumps(OAKLAND | {"latitude": 10**400}), "latitude"),  # too large for a float
        (json.dumps(OAKLAND | {"longitude": "-122"}), "longitude"),
        (json.dumps(OAKLAND | {"longitude": -180.5}), "longitude"),
        (json.dumps(OAKLAND | {"last_updated": "yesterday"}), "last_updated"),
        (json.dumps(OAKLAND | {"last_updated": "2024-02-30"}), "last_updated"),
        (json.dumps(OAKLAND | {"last_updated": "20240115"}), "last_updated"),
        (json.dumps(OAKLAND | {"popup_data": [1, 2]}), "popup_data"),
        (json.dumps(OAKLAND | {"popup_data": "{}"}), "popup_data"),
        # Parsed, but no strict encoder (the reply, the next webhook's) takes them: 1e400 is read as inf.
        (_with_raw("popup_data", '{"population": 1e400}'), "popup_data"),
        (_with_raw("popup_data", '{"motto": "\\ud800"}'), "popup_data"),
        (_with_raw("popup_data", '{"a": ' * 40 + "1" + "}" * 40), "popup_data"),
        (_with_raw("popup_data", '{"a": ' + "[" * 970 + "]" * 970 + "}"), "popup_data"),
        (_with_raw("extra", "-1e400"), "extra"),
        (_with_raw("extra", '["\\udfff"]'), "extra"),
        (_with_raw("\\udfff", "1"), None),
    ],
)
def test_bad_bodies_are_400_and_store_nothing(http, wh_store, content, field):
    response = send(http, content=content)
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert response.json().get("field") == field
    assert_nothing_stored(wh_store)


def test_text_that_no_database_stores_is_named_as_such(http, wh_store):
    response = send(http, content=json.dumps(OAKLAND | {"name": "a\x00b"}))
    assert response.json() == {"error": "name must be a string without NUL characters or lone surrogates", "field": "name"}


@pytest.mark.parametrize(
    "subdomain", ["Oakland.CA", "evil.com%2F..%2Fx", "a..b", "-x.ca", "x.ca-", "oak%20land.ca", "a_b.ca", "%2E%2E", ""]
)
def test_invalid_subdomains_are_400_and_store_nothing(http, wh_store, subdomain):
    response = send(http, subdomain)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "subdomain"
    assert_nothing_stored(wh_store)


def test_oversized_bodies_are_413_and_store_nothing(http, wh_store):
    big = OAKLAND | {"popup_data": {"blob": "x" * 5000}}
    assert send(http, body=big).status_code == 413  # Content-Length says so

    def chunks():  # no Content-Length: the receiver must count what it reads
        yield json.dumps(OAKLAND)[:-1].encode()
        for _ in range(10):
            yield b', "pad%d": "' % _ + b"x" * 500 + b'"'
        yield b"}"

    response = send(http, content=chunks())
    assert response.status_code == 413
    assert "error" in response.json()
    assert_nothing_stored(wh_store)
    assert send(http).status_code == 201  # the server is still fine


def test_events_record_changed(http, wh_store):
    send(http)  # new municipality
    send(http, body=OAKLAND | {"name": "City of Oakland"})  # same pages and last_updated
    send(http, body=OAKLAND | {"pages": 151})
    send(http, body=OAKLAND | {"pages": 151, "last_updated": "2024-02-01"})
    events = wh_store.webhook_events_after(0)
    assert [e["changed"] for e in events] == [True, False, True, True]
    assert [e["action"] for e in events] == ["created", "updated", "updated", "updated"]
    assert [e["id"] for e in wh_store.webhook_events_after(events[1]["id"])] == [events[2]["id"], events[3]["id"]]


def test_unknown_fields_are_kept_in_the_event_but_never_stored_as_columns(http, wh_store):
    body = OAKLAND | {"population": 440000, "created_at": "1999-01-01", "subdomain": "evil.com"}
    response = send(http, body=body)
    assert response.status_code == 201
    assert response.json()["subdomain"] == "oakland.ca"
    assert not response.json()["created_at"].startswith("1999")
    assert "population" not in response.json()
    payload = json.loads(wh_store.webhook_events_after(0)[0]["payload"])
    assert payload["population"] == 440000
    assert "created_at" not in payload and "subdomain" not in payload


def test_store_failure_is_503_never_2xx(http, wh_store, monkeypatch):
    def broken(*_args):
        raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(wh_store, "record_webhook", broken)
    response = send(http)
    assert response.status_code == 503
    assert "error" in response.json()
    monkeypatch.undo()
    assert send(http).status_code == 201  # civic.band's retry then succeeds


def test_healthz(http, wh_store, monkeypatch, tmp_path):
    assert http.get("/healthz").json() == {"ok": True}
    assert http.get("/healthz").status_code == 200
    monkeypatch.setattr(wh_store, "engine", sa.create_engine(f"sqlite:///{tmp_path}/missing/dir/x.db"))
    response = http.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"ok": False}


def test_secret_never_logged(http, caplog):
    caplog.set_level("DEBUG")
    send(http)
    send(http, headers={"Authorization": f"Bearer {SECRET}x"})
    assert "accepted" in caplog.text and "oakland.ca" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.parametrize("value", [None, ""])
def test_serve_refuses_to_start_without_the_secret(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(webhooks.SECRET_ENV, raising=False)
    else:
        monkeypatch.setenv(webhooks.SECRET_ENV, value)
    with pytest.raises(SystemExit, match="CIVICBAND_WEBHOOK_SECRET is not set: refusing to accept unauthenticated webhooks"):
        webhooks.serve("127.0.0.1", 0)


def test_make_app_refuses_an_empty_secret(wh_store):
    with pytest.raises(ValueError, match="refusing"):
        webhooks.make_app(wh_store, "")
