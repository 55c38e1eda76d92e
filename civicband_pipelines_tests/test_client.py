"""The civic.band client against the real replica and its misbehaving proxy."""

import dataclasses
import datetime as dt
import email.utils
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from civicband_pipelines.client import CivicBandClient, TransientError, UnknownMunicipality, UpstreamError
from civicband_pipelines.assets import default_time_budget
from civicband_pipelines.config import ClientSettings, ConfigError
from civicband_pipelines.leases import stale_after_from_env
from civicband_pipelines.naming import InvalidSubdomain
from civicband_pipelines.replica.faults import FAULT_KINDS

from .replica_process import running_replica
from .upstream import upstream_rows


def test_pages_through_a_table_with_keyset_cursors(client, replica_root, municipality):
    ids = [row["id"] for page in client.iter_pages(municipality, "agenda", 13) for row in page.rows]
    assert sorted(ids) == sorted(r["id"] for r in upstream_rows(replica_root, municipality, "agenda"))
    assert len(ids) == len(set(ids))
    assert any("~" in i and "&" in i for i in ids)  # URL-special ids came through the cursor
    assert client.count(municipality, "agenda") == len(ids)


@pytest.mark.parametrize("id_ranges", [2, 7, 40])
@pytest.mark.parametrize("filters", [{}, {"date__gte": "2021-06-01", "date__lte": "2021-06-30"}], ids=["all", "window"])
def test_ranges_of_ids_page_each_row_once_in_order(client, replica_root, municipality, filters, id_ranges):
    """Ranges are compared as SQLite compares ids (text): the odd ids (~ , & % + and a NUL) each land
    in one range, and no range end is all digits (which Datasette would compare as a number)."""
    pages = list(client.iter_pages(municipality, "agenda", 13, filters=filters, id_ranges=id_ranges))
    ids = [row["id"] for page in pages for row in page.rows]
    rows = upstream_rows(replica_root, municipality, "agenda")
    in_window = [r["id"] for r in rows if not filters or filters["date__gte"] <= str(r["date"]) <= filters["date__lte"]]
    assert ids == sorted(in_window, key=lambda i: i.encode())
    assert any("~" in i for i in ids) and any("\x00" in i for i in ids)
    assert len(pages) >= id_ranges  # a request per range at least: none scanned two


def test_a_range_of_ids_ends_inside_the_range_its_cursor_is_in():
    from civicband_pipelines.client import _id_range_end

    assert _id_range_end(None, 1) is None and _id_range_end("anything", 1) is None
    assert [_id_range_end(c, 4) for c in (None, "0f", "3fffffffffffg", "400000000000", "c00000000001", "zz")] == [
        "400000000000g", "400000000000g", "400000000000g", "400000000000g", None, None,
    ]
    assert _id_range_end("7fffffffffff~2C", 2) == "800000000000g"  # a tilde-encoded ","


def test_unknown_municipality_is_reported_not_parsed(client, replica):
    replica.reset_stats()
    with pytest.raises(UnknownMunicipality, match="no such municipality on civic.band: 'nowhere.zz'"):
        client.fetch_page("nowhere.zz", "agenda", 10, None)
    assert replica.fault_stats()["requests"] == 1  # not retried


@pytest.mark.parametrize("subdomain", ["Oakland.CA", "evil.com/../x", "a..b", "-x.ca", "x.ca:80", "", "a b", "oakland.ca\n"])
def test_invalid_subdomains_never_reach_the_network(client, replica, subdomain):
    replica.reset_stats()
    with pytest.raises(InvalidSubdomain):
        client.fetch_page(subdomain, "agenda", 10, None)
    assert replica.fault_stats()["requests"] == 0


def test_other_4xx_fail_at_once_with_the_upstream_message(client, replica, municipality):
    replica.reset_stats()
    with pytest.raises(UpstreamError, match="_size must be <= 1000"):
        client._get_json(municipality, "/meetings/agendas.json", [("_size", "1001")])
    assert replica.fault_stats()["requests"] == 1


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_transient_fault_is_retried_with_backoff(client, replica, municipality, kind):
    replica.set_faults(rate=1.0, kinds=[kind], max_faults=2, retry_after=0, slow_seconds=3.0)
    replica.reset_stats()
    page = client.fetch_page(municipality, "agenda", 5, None)
    assert len(page.rows) == 5
    stats = replica.fault_stats()
    assert stats["faults"] == {kind: 2} and stats["table_pages_ok"] == 1


def test_gives_up_after_its_retries_with_a_clear_error(client_settings, replica, municipality):
    replica.set_faults(rate=1.0, kinds=["error_503"])
    replica.reset_stats()
    with CivicBandClient(dataclasses.replace(client_settings, retries=2)) as client:
        with pytest.raises(TransientError, match="HTTP 503"):
            client.fetch_page(municipality, "agenda", 5, None)
    assert replica.fault_stats()["requests"] == 3


def test_a_cancelled_fetch_is_not_retried(client, replica, municipality, caplog):
    """The prefetch thread's request of a sync that has ended: a retry would log an upstream fault (or the
    closed client's "Bad file descriptor") after the partition is done."""
    replica.set_faults(rate=1.0, kinds=["error_503"])
    replica.reset_stats()
    cancel = threading.Event()
    cancel.set()
    with caplog.at_level(logging.WARNING, "civicband_pipelines.client"), pytest.raises(TransientError, match="HTTP 503"):
        client.fetch_page(municipality, "agenda", 5, None, cancel=cancel)
    assert replica.fault_stats()["requests"] == 1 and "retry" not in caplog.text
    cancel.clear()
    with pytest.raises(TransientError, match="HTTP 503"):  # not cancelled: its retries as ever
        client.fetch_page(municipality, "agenda", 5, None, cancel=cancel)
    assert replica.fault_stats()["requests"] == 1 + 4


def test_retry_after_is_honoured(client_settings, replica, municipality):
    replica.set_faults(rate=1.0, kinds=["rate_429"], max_faults=1, retry_after=1)
    started = time.monotonic()
    with CivicBandClient(client_settings) as client:  # backoff 0.01 s: only Retry-After explains a 1 s wait
        client.fetch_page(municipality, "agenda", 5, None)
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize("fault, plan", [("rate_429", "retry_after"), ("error_503", "retry_after_503")])
def test_retry_after_as_an_http_date_is_honoured_on_429_and_503(client_settings, replica, municipality, fault, plan):
    # Two seconds ahead, at HTTP dates' one-second resolution: at least one second from `started`.
    started = time.monotonic()
    when = email.utils.format_datetime(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2), usegmt=True)
    replica.set_faults(rate=1.0, kinds=[fault], max_faults=1, **{plan: when})
    with CivicBandClient(client_settings) as client:  # backoff 0.01 s: only Retry-After explains a 1 s wait
        client.fetch_page(municipality, "agenda", 5, None)
    assert time.monotonic() - started >= 1.0


def test_a_402_waits_out_the_rate_limit_window_not_just_the_backoff(client_settings, replica, municipality, caplog):
    replica.set_faults(rate=1.0, kinds=["rate_402"], max_faults=1)  # civic.band's 402 has no Retry-After
    replica.reset_stats()
    settings = dataclasses.replace(client_settings, rate_limit_wait=1.5)  # backoff 0.01 s: only the setting explains 1.5 s
    with CivicBandClient(settings) as client, caplog.at_level(logging.WARNING, "civicband_pipelines.client"):
        assert len(client.fetch_page(municipality, "agenda", 5, None).rows) == 5
    refused, retried = replica.fault_stats()["table_page_requests"]
    assert (refused["status"], retried["status"]) == (402, 200)
    assert retried["received_at"] - refused["received_at"] >= 1.5
    assert "waiting 1.5 s for civic.band's rate limit" in caplog.text


def test_the_rate_limit_wait_is_a_minute_unless_configured(monkeypatch):
    monkeypatch.delenv("CIVICBAND_HTTP_RATE_LIMIT_WAIT", raising=False)
    assert ClientSettings().rate_limit_wait == ClientSettings.from_env().rate_limit_wait == 60.0
    monkeypatch.setenv("CIVICBAND_HTTP_RATE_LIMIT_WAIT", "2.5")
    assert ClientSettings.from_env().rate_limit_wait == 2.5
    for bad in ("-1", "soon", "nan", "inf", "1e20"):  # 1e20 overflows time.sleep
        monkeypatch.setenv("CIVICBAND_HTTP_RATE_LIMIT_WAIT", bad)
        with pytest.raises(ValueError, match=rf"CIVICBAND_HTTP_RATE_LIMIT_WAIT must be a number of seconds >= 0 \(at most a year\), got '{bad}'"):
            ClientSettings.from_env()


@pytest.mark.parametrize("name, bad, rule", [
    ("CIVICBAND_HTTP_TIMEOUT", "abc", "a number of seconds > 0"),
    ("CIVICBAND_HTTP_TIMEOUT", "0", "a number of seconds > 0"),
    ("CIVICBAND_HTTP_BACKOFF", "-1", "a number of seconds >= 0"),
    ("CIVICBAND_HTTP_TIMEOUT", "1e300", "a number of seconds > 0"),
    ("CIVICBAND_HTTP_RETRIES", "-1", "a whole number >= 0"),
    ("CIVICBAND_HTTP_RETRIES", "2.5", "a whole number >= 0"),
    ("CIVICBAND_MAX_SCAN_ROWS", "0", "a whole number >= 1"),
])
def test_client_settings_name_the_variable_that_is_wrong(monkeypatch, name, bad, rule):
    monkeypatch.setenv(name, bad)
    with pytest.raises(ConfigError, match=f"^{name} must be {rule}( \\(at most a year\\))?, got '{bad}'$"):
        ClientSettings.from_env()


def test_other_numeric_settings_name_the_variable_that_is_wrong(monkeypatch):
    monkeypatch.setenv("CIVICBAND_LEASE_STALE_SECONDS", "soon")
    with pytest.raises(ConfigError, match="CIVICBAND_LEASE_STALE_SECONDS must be a number of seconds > 0"):
        stale_after_from_env()
    monkeypatch.setenv("CIVICBAND_TIME_BUDGET_SECONDS", "-5")
    with pytest.raises(ConfigError, match="CIVICBAND_TIME_BUDGET_SECONDS must be a number of seconds > 0"):
        default_time_budget()
    # Read when the code location loads: the error names the variable, not a bare int() failure.
    for name in ("CIVICBAND_SENSOR_INTERVAL_SECONDS", "CIVICBAND_MAX_REPAIRS"):
        loading = subprocess.run([sys.executable, "-c", "import civicband_pipelines.definitions"], capture_output=True,
                                 text=True, env={**os.environ, name: "1.5"}, timeout=120)
        assert loading.returncode != 0 and f"ConfigError: {name} must be a whole number" in loading.stderr


def test_service_secret_lifts_the_public_page_cap(client_settings, replica_root, municipality):
    with running_replica(replica_root, proxy=False, service_secret="s3cret") as guarded:
        settings = dataclasses.replace(client_settings, base_url=guarded.base_url_template)
        with CivicBandClient(settings) as anonymous:
            assert len(anonymous.fetch_page(municipality, "agenda", 200, None).rows) == 100
        with CivicBandClient(dataclasses.replace(settings, service_secret="s3cret")) as trusted:
            assert len(trusted.fetch_page(municipality, "agenda", 200, None).rows) == 200


def test_batch_size_is_bounded(client, municipality):
    with pytest.raises(ValueError, match="between 1 and 1000"):
        client.fetch_page(municipality, "agenda", 1001, None)
