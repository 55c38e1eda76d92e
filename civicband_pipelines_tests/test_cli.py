"""The `civicband` command as a user runs it: real processes, a real Dagster instance, kill -9."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from civicband_pipelines.leases import MunicipalityLease, SyncOwner, active_lease
from civicband_pipelines.partitions import partition_key
from civicband_pipelines.replica.generate import reocr_pages

from .conftest import make_municipality, wait_until
from .dagster_stack import free_port
from .upstream import assert_equals_upstream, replica_db, upstream_rows

# The command's own behaviour (output, exit codes, settings) is the same on both stores: these
# run on SQLite only. What differs by store (leases: rows on SQLite, advisory locks on PostgreSQL; kill -9,
# Ctrl-C and resume) runs on both, as do the store's own tests (test_store, test_sync, test_verify).
SQLITE_ONLY = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


@pytest.fixture
def cli_env(tmp_path, replica, store_url):
    env = dict(os.environ)
    env.update(
        CIVICBAND_HOME=str(tmp_path / "home"),
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        CIVICBAND_DATABASE_URL=store_url,
        CIVICBAND_BASE_URL=replica.base_url_template,
        CIVICBAND_HTTP_TIMEOUT="5",
        CIVICBAND_HTTP_BACKOFF="0.01",
        CIVICBAND_LEASE_STALE_SECONDS="3",  # a killed holder frees its municipality after 3 s
    )
    return env


def civicband(env, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "civicband_pipelines.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


def start_civicband(env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "civicband_pipelines.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def slow_pages(replica, municipality: str) -> None:
    """0.1 s per page of this municipality: a sync of ~45 requests of 7 rows runs for seconds after the
    test has seen its first pages land, time enough to kill, stop or interrupt it however loaded the machine."""
    replica.set_faults(rate=1.0, kinds=["slow"], slow_seconds=0.1, path_contains=f"/{municipality}/meetings/")


def latest_materialization(env, municipality: str, document_type: str):
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("meeting_pages"))
        assert event.dagster_event.partition == partition_key(municipality, document_type)
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@SQLITE_ONLY
def test_backfill_records_runs_in_the_instance_and_prints_a_summary(cli_env, store, replica_root, municipality):
    # The time budget frees daemon run workers; a sync in the foreground runs to its end.
    cli_env["CIVICBAND_TIME_BUDGET_SECONDS"] = "0.001"
    done = civicband(cli_env, "backfill", f"--subdomain={municipality}", "--batch-size=100")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 of 2 partitions synced and verified" in done.stdout
    for document_type in ("agenda", "minutes"):
        assert_equals_upstream(store, replica_root, municipality, document_type)
    metadata = latest_materialization(cli_env, municipality, "minutes")
    assert metadata["pages_fetched"] == len(upstream_rows(replica_root, municipality, "minutes"))
    assert metadata["pages_rejected"] == 5 and metadata["resumed"] is False
    status = civicband(cli_env, "status")
    assert municipality in status.stdout and "completed" in status.stdout


@pytest.mark.parametrize("again", ["--wait", "--resume"])
def test_kill_9_mid_backfill_then_run_again_resumes_and_fetches_only_the_rest(cli_env, store, replica, replica_root, municipality, again):
    total = len(upstream_rows(replica_root, municipality, "agenda"))
    slow_pages(replica, municipality)
    process = start_civicband(cli_env, "backfill", f"--subdomain={municipality}", "--document-type=agenda", "--batch-size=7")
    try:
        wait_until(lambda: (store.job(municipality, "agenda") or {}).get("pages_fetched", 0) >= 70, what="70 pages")
        assert process.poll() is None, "the sync ended before it could be killed"
    finally:
        process.kill()  # SIGKILL: no cleanup of any kind
        process.wait()
    replica.clear_faults()
    job = store.job(municipality, "agenda")
    saved = job["pages_fetched"]
    assert job["status"] == "running" and job["last_cursor"] and saved < total

    if again == "--wait":  # no manual cleanup: --wait waits out the dead holder's lease (stale after 3 s here)
        done = civicband(cli_env, "backfill", f"--subdomain={municipality}", "--document-type=agenda", "--batch-size=7", "--wait")
    else:  # with no daemon to settle it, the killed sync still says `running`: --resume picks it up all the same
        if store.engine.dialect.name == "sqlite":  # the dead holder's lease lives on until it is stale
            patient = {**cli_env, "CIVICBAND_LEASE_STALE_SECONDS": "120"}  # to see it still live, however slow the start
            refused = civicband(patient, "backfill", "--subdomain=all", "--resume", "--batch-size=7")
            assert refused.returncode == 3, refused.stdout + refused.stderr  # busy, not "nothing to do"
            assert f"Backfill already in progress for {municipality}" in refused.stderr
            # (Below, with the 3 s of cli_env, the lease is long stale: --wait's waiting is the other case's test.)
        # (PostgreSQL dropped the dead holder's advisory lock with its session: no wait.)
        done = civicband(cli_env, "backfill", "--subdomain=all", "--resume", "--batch-size=7", "--wait")
        assert "1 of 1 partitions" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    metadata = latest_materialization(cli_env, municipality, "agenda")
    assert metadata["resumed"] is True and metadata["resumed_from_cursor"] == job["last_cursor"]
    assert metadata["pages_fetched"] <= total - saved + 7
    assert store.job(municipality, "agenda")["pages_fetched"] == total
    assert_equals_upstream(store, replica_root, municipality, "agenda")
    # The killed run no longer shows as started (that would hold the municipality's run-queue slot), and
    # as its sync was resumed, it shows canceled, not failed (which would start a run retry).
    assert run_status(cli_env, job["run_id"]) == dg.DagsterRunStatus.CANCELED


def run_status(env, run_id: str) -> dg.DagsterRunStatus:
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        return instance.get_run_by_id(run_id).status


def test_a_suspended_sync_whose_lease_was_taken_over_stops_without_writing(cli_env, store, store_url, replica, replica_root, municipality):
    """A sync frozen past the lease's staleness (laptop asleep, SIGSTOP) may be taken over on SQLite; when
    it wakes up, its next write finds the lease gone and it stops, leaving the other sync's work alone.
    On PostgreSQL the frozen sync keeps its advisory lock, so nobody takes over."""
    slow_pages(replica, municipality)
    frozen = start_civicband(cli_env, "backfill", f"--subdomain={municipality}", "--document-type=agenda", "--batch-size=7")
    try:
        wait_until(lambda: (store.job(municipality, "agenda") or {}).get("pages_fetched", 0) >= 70, what="70 pages")
        assert frozen.poll() is None, "the sync ended before it could be suspended"
        _suspend_outside_a_write(frozen, store_url, cli_env["DAGSTER_HOME"])
        replica.clear_faults()
        if store_url.startswith("sqlite"):
            wait_until(lambda: active_lease(store, municipality, 3) is None, what="the frozen sync's lease to go stale")
        other = civicband(cli_env, "backfill", f"--subdomain={municipality}", "--document-type=agenda", "--restart")
        if store_url.startswith("postgresql"):
            assert other.returncode == 3 and "Backfill already in progress" in other.stderr, other.stdout + other.stderr
        else:
            assert other.returncode == 0, other.stdout + other.stderr
            taken_over = store.job(municipality, "agenda")
    finally:
        frozen.send_signal(signal.SIGCONT)
    output, _ = frozen.communicate(timeout=120)
    if store_url.startswith("sqlite"):
        assert frozen.returncode == 1 and "took over the municipality's lease" in output, output[-3000:]
        assert store.job(municipality, "agenda") == taken_over  # the woken sync changed nothing
    else:
        assert frozen.returncode == 0, output[-3000:]
    assert store.job(municipality, "agenda")["status"] == "completed"
    assert_equals_upstream(store, replica_root, municipality, "agenda")


def _suspend_outside_a_write(process: subprocess.Popen, store_url: str, dagster_home: str) -> None:
    """SIGSTOP the process at a moment it holds no lock on an SQLite file another process must write:
    the meetings store, and the Dagster instance's databases, where the next CLI records its run."""
    store = [store_url.removeprefix("sqlite:///")] if store_url.startswith("sqlite") else []
    while True:
        process.send_signal(signal.SIGSTOP)
        if all(_sqlite_writable(path) for path in store + sorted(Path(dagster_home).rglob("*.db"))):
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.01)  # let it finish its transaction


def _sqlite_writable(path) -> bool:
    """No other connection holds a lock that a write waits for: EXCLUSIVE also finds the readers of a
    database in rollback-journal mode (in WAL mode it is the same as IMMEDIATE)."""
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


def test_interrupted_backfill_stops_shows_paused_and_resume_picks_it(cli_env, store, replica, replica_root, municipality):
    slow_pages(replica, municipality)
    process = start_civicband(cli_env, "backfill", f"--subdomain={municipality}", "--batch-size=7")  # agenda, then minutes
    wait_until(lambda: (store.job(municipality, "agenda") or {}).get("pages_fetched", 0) >= 28, what="28 pages")
    assert process.poll() is None, "the sync ended before it could be interrupted"
    process.send_signal(signal.SIGINT)  # what Ctrl-C (and a cancelled in-process run) does
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output[-3000:]
    assert "interrupted: stopped (a sync that was running stopped at its last checkpoint" in output
    assert "the same command again goes on from there, and syncs what it had not begun" in output
    assert store.job(municipality, "agenda")["status"] == "paused", output
    assert store.job(municipality, "minutes") is None, output  # the command stopped: minutes never began
    replica.clear_faults()
    # status lists the partition never begun too, as pending (--resume below leaves it alone).
    status = civicband(cli_env, "status").stdout.splitlines()
    assert [line.split()[:3] for line in status if line.startswith(municipality)] == [
        [municipality, "agenda", "paused"], [municipality, "minutes", "pending"]], status

    done = civicband(cli_env, "backfill", "--subdomain=all", "--resume", "--batch-size=7")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 of 1 partitions" in done.stdout  # only the paused partition
    assert_equals_upstream(store, replica_root, municipality, "agenda")


@SQLITE_ONLY
def test_municipalities_add_reads_a_file_with_comments(cli_env, tmp_path, replica_root):
    first, second = (make_municipality(replica_root, documents=2, pages=(1, 2)) for _ in range(2))
    listing = tmp_path / "municipalities.txt"
    listing.write_text(f"# civic.band sites\n{first}   # the first\n\n   # indented comment\n  {second}\n")
    for command in ("backfill", "verify"):  # nothing registered yet: say how to register
        empty = civicband(cli_env, command, "--subdomain=all")
        assert empty.returncode == 0 and "no municipality is registered yet (`civicband municipalities add" in empty.stdout
    done = civicband(cli_env, "municipalities", "add", "--file", str(listing))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["registered", first, "registered", second]


@SQLITE_ONLY
def test_dev_refuses_a_port_it_could_not_wait_for(cli_env):
    done = civicband(cli_env, "dev", "--port", "0")
    assert done.returncode == 2 and "'0' is not a port between 1 and 65535" in done.stderr


@SQLITE_ONLY
def test_dev_without_datasette_says_which_extra_to_install(cli_env, tmp_path):
    # As after a plain `pip install .`: importing datasette fails.
    code = "import sys; sys.modules['datasette'] = None; from civicband_pipelines.cli import main; sys.exit(main())"
    dev = subprocess.Popen([sys.executable, "-c", code, "dev", "--dir", str(tmp_path / "dev"), "--port", str(free_port()),
                            "--webhook-port", str(free_port())], env=cli_env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = dev.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # it started the stack after all: SIGTERM stops it and its children
        dev.terminate()
        _, stderr = dev.communicate(timeout=60)
    assert dev.returncode == 1 and "Traceback" not in stderr, stderr
    assert stderr.strip() == ("error: the local civic.band replica needs Datasette, from the project's test extra: "
                              "pip install -e '.[test]' (scripts/demo installs it)")
    assert not (tmp_path / "dev").exists()


@SQLITE_ONLY
def test_unknown_and_invalid_subdomains_get_clear_errors(cli_env):
    unknown = civicband(cli_env, "backfill", "--subdomain=nowhere.zz")
    assert unknown.returncode == 2 and "no such municipality on civic.band: 'nowhere.zz'" in unknown.stderr
    invalid = civicband(cli_env, "backfill", "--subdomain=evil.com/../x")
    assert invalid.returncode == 2 and "invalid subdomain" in invalid.stderr
    too_big = civicband(cli_env, "backfill", "--subdomain=all", "--batch-size=10001")
    assert too_big.returncode == 2 and "--batch-size must be between 1 and 10000" in too_big.stderr


@SQLITE_ONLY
def test_a_wrong_setting_is_one_line_naming_it_and_a_relative_home_works(cli_env, tmp_path, municipality):
    wrong = civicband({**cli_env, "CIVICBAND_HTTP_TIMEOUT": "abc"}, "municipalities", "add", municipality)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert wrong.stderr.splitlines()[-1] == "error: CIVICBAND_HTTP_TIMEOUT must be a number of seconds > 0 (at most a year), got 'abc'"
    # The sensors' settings too, though only the code location and `status` read them.
    for name, command in (("CIVICBAND_MAX_REPAIRS", ["status"]),
                          ("CIVICBAND_SENSOR_INTERVAL_SECONDS", ["backfill", f"--subdomain={municipality}"])):
        wrong = civicband({**cli_env, name: "abc"}, *command)
        assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr
        assert wrong.stderr.splitlines()[-1].startswith(f"error: {name} must be a whole number"), wrong.stderr
    # Settings only the runs read stop the command before any run, not each run on its own.
    assert civicband(cli_env, "municipalities", "add", municipality).returncode == 0
    for name, command in (("CIVICBAND_LEASE_STALE_SECONDS", "backfill"), ("CIVICBAND_HTTP_RETRIES", "verify")):
        wrong = civicband({**cli_env, name: "-1"}, command, "--subdomain=all")
        assert wrong.returncode == 2 and wrong.stderr.splitlines()[-1].startswith(f"error: {name} must be"), wrong.stderr
        assert "FAILED" not in wrong.stderr and "ERROR" not in wrong.stdout + wrong.stderr
    relative = {k: v for k, v in cli_env.items() if k not in ("DAGSTER_HOME", "CIVICBAND_DATABASE_URL")}
    status = civicband({**relative, "CIVICBAND_HOME": "home-here"}, "status", cwd=tmp_path)
    assert status.returncode == 0, status.stderr  # DAGSTER_HOME is made from it, and must be absolute
    assert (tmp_path / "home-here" / "meetings.db").exists() and (tmp_path / "home-here" / "dagster").is_dir()


@pytest.mark.parametrize("name, value, said", [
    ("CIVICBAND_DATABASE_URL", "postgresql://user@127.0.0.1/db", "needs the missing Python module 'psycopg'; for PostgreSQL use postgresql+psycopg2://"),
    ("CIVICBAND_DATABASE_URL", "meetings.db", "the meetings store URL is not one this project can open"),
    ("CIVICBAND_DATABASE_URL", "postgresql+psycopg2://user:hunter2@127.0.0.1:{port}/db", "the meetings store postgresql+psycopg2://user:***@127.0.0.1:{port}/db cannot be opened: "),
    ("CIVICBAND_BASE_URL", "https://civic.band", "CIVICBAND_BASE_URL must be an http(s) URL with {subdomain} in it"),
    ("CIVICBAND_BASE_URL", "https://{sub}.civic.band", "CIVICBAND_BASE_URL must be"),
    ("CIVICBAND_BASE_URL", "{subdomain}.civic.band", "CIVICBAND_BASE_URL must be"),
])
@SQLITE_ONLY  # the URLs under test stand in for the store
def test_a_wrong_store_or_upstream_url_is_one_line_saying_what_is_wrong(cli_env, municipality, name, value, said):
    port = str(free_port())  # nothing listens there
    wrong = civicband({**cli_env, name: value.replace("{port}", port)}, "municipalities", "add", municipality)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr
    last = wrong.stderr.splitlines()[-1]
    assert last.startswith("error: ") and said.replace("{port}", port) in last, wrong.stderr
    assert "hunter2" not in wrong.stderr


@SQLITE_ONLY
def test_a_failed_sync_is_one_line_with_its_reason_not_a_traceback(cli_env, store, replica, municipality):
    assert civicband(cli_env, "municipalities", "add", municipality).returncode == 0
    replica.set_faults(rate=1.0, kinds=["error_500"])
    failed = civicband({**cli_env, "CIVICBAND_HTTP_RETRIES": "1"}, "backfill", f"--subdomain={municipality}",
                       "--document-type=agenda")
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1 and f"FAILED: {municipality}/agenda" in failed.stderr
    run_id = store.job(municipality, "agenda")["run_id"]
    assert (f'ERROR: Execution of step "meeting_pages" failed: civicband_pipelines.client.TransientError: HTTP 500 '
            f"from {replica.base_url_template.format(subdomain=municipality)}/meetings/agendas.json") in output
    assert f"(traceback in the logs of run {run_id})" in output
    assert "Stack Trace" not in output and output.count("HTTP 500 from") == 1 + 2, "the failure once; two retry warnings"
    replica.clear_faults()
    synced = civicband(cli_env, "backfill", f"--subdomain={municipality}", "--document-type=agenda")
    assert synced.returncode == 0 and f"{municipality}/agenda: batch 1: " in synced.stderr
    assert " - dagster - " not in synced.stderr, "the sync's own lines, without Dagster's prefix per line"


@SQLITE_ONLY
def test_verify_reports_missing_pages_and_exit_code(cli_env, store, replica_root, municipality):
    assert civicband(cli_env, "backfill", f"--subdomain={municipality}", "--document-type=agenda").returncode == 0
    assert civicband(cli_env, "verify", f"--subdomain={municipality}", "--document-type=agenda").returncode == 0
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "delete from meeting_pages where id in (select id from meeting_pages where municipality = %s "
            "order by upstream_id limit 3)" % f"'{municipality}'"
        )
    verify = civicband(cli_env, "backfill", f"--subdomain={municipality}", "--document-type=agenda", "--verify-only")
    assert verify.returncode == 1
    assert "MISMATCH" in verify.stdout and "missing 3" in verify.stdout


@SQLITE_ONLY
def test_verify_deep_compares_ids_and_finds_a_changed_page_the_counts_miss(cli_env, store, replica_root, municipality):
    assert civicband(cli_env, "backfill", f"--subdomain={municipality}", "--document-type=agenda").returncode == 0
    (document,) = reocr_pages(replica_db(replica_root, municipality), "agenda", 1, seed=3).documents  # same count
    partition = [f"--subdomain={municipality}", "--document-type=agenda"]
    counts = civicband(cli_env, "verify", *partition)
    assert counts.returncode == 0 and "OK" in counts.stdout, counts.stdout + counts.stderr
    for deep in (["verify", *partition, "--deep"], ["backfill", *partition, "--verify-only", "--deep"]):
        result = civicband(cli_env, *deep)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "MISMATCH" in result.stdout and "missing 1, extra 1" in result.stdout
        assert f"stale:\n    - {document[0]} {document[1]} (1 missing, 1 extra)" in result.stdout
    refused = civicband(cli_env, "backfill", *partition, "--deep")
    assert refused.returncode == 2 and "--deep goes with --verify-only" in refused.stderr


def test_second_backfill_of_a_busy_municipality_is_refused_and_status_stays_true(cli_env, store, replica, municipality, replica_root):
    # The first sync is parked on its first page (answered after 10 minutes, within its own timeout), so
    # it still runs when killed however long the commands below take.
    replica.set_faults(rate=1.0, kinds=["slow"], slow_seconds=600, path_contains=f"/{municipality}/meetings/agendas")
    first = start_civicband({**cli_env, "CIVICBAND_HTTP_TIMEOUT": "900"}, "backfill", f"--subdomain={municipality}",
                            "--document-type=agenda", "--batch-size=7")
    try:
        wait_until(lambda: (store.job(municipality, "agenda") or {}).get("status") == "running", what="the first sync")
        second = civicband(cli_env, "backfill", f"--subdomain={municipality}", "--document-type=minutes")
        assert second.returncode == 3 and f"SKIPPED: {municipality} (another sync holds it" in second.stderr
        assert f"Backfill already in progress for {municipality} (started: just now). Active: cli run " in second.stderr
        assert "agenda full mode. Check the UI or wait." in second.stderr
        # `all` syncs every other municipality, including one only the webhook receiver has stored so far.
        other = make_municipality(replica_root, documents=5, pages=(2, 3))
        store.record_webhook(other, {"name": "Other", "pages": 10})
        everyone = civicband(cli_env, "backfill", "--subdomain=all", "--document-type=minutes")
        assert everyone.returncode == 3, everyone.stdout + everyone.stderr
        assert "1 of 1 partitions synced and verified" in everyone.stdout
        assert f"SKIPPED: {municipality} (another sync holds it" in everyone.stderr
        assert_equals_upstream(store, replica_root, other, "minutes")
        assert store.job(municipality, "minutes") is None
        status = civicband(cli_env, "status")
        assert "running" in status.stdout
        assert first.poll() is None, "the first sync ended before it could be killed"
    finally:
        first.kill()
        first.wait()
    # Once the dead holder's lease is stale, status says failed, not running.
    wait_until(lambda: "failed" in civicband(cli_env, "status").stdout, timeout=30, what="the job to show failed")
    assert store.job(municipality, "agenda")["status"] == "failed"


def test_of_two_backfills_started_at_once_one_syncs_and_the_other_only_says_it_skipped(cli_env, store, replica, municipality, replica_root):
    replica.set_faults(rate=1.0, kinds=["slow"], slow_seconds=0.3)  # the winner still syncs as the other starts
    command = ("backfill", f"--subdomain={municipality}", "--document-type=minutes", "--batch-size=7")
    both = [start_civicband(cli_env, *command) for _ in range(2)]
    try:
        outputs = [process.communicate(timeout=300)[0] for process in both]
    finally:
        for process in both:
            process.kill()
            process.wait()
    codes = [process.returncode for process in both]
    assert sorted(codes) == [0, 3], "\n=====\n".join(outputs)
    loser = outputs[codes.index(3)]
    # Refused at its check, or its run found the lease taken: either way no job table of nothing.
    assert f"SKIPPED: {municipality}" in loser and "(no jobs yet)" not in loser and "0 of 0" not in loser, loser
    assert_equals_upstream(store, replica_root, municipality, "minutes")


def test_a_municipality_taken_while_backfill_all_runs_is_skipped_not_failed(cli_env, store, replica, municipality, replica_root):
    other = make_municipality(replica_root, documents=40, pages=(3, 12))  # as large: either may come first
    assert civicband(cli_env, "municipalities", "add", municipality, other).returncode == 0
    first, second = sorted([municipality, other])  # `all` goes in this order
    replica.set_faults(rate=1.0, kinds=["slow"], slow_seconds=0.2)
    everyone = start_civicband(cli_env, "backfill", "--subdomain=all", "--document-type=agenda", "--batch-size=7")
    try:
        wait_until(lambda: (store.job(first, "agenda") or {}).get("pages_fetched", 0) >= 7, what="the first sync")
        # The command checked both leases at its start; a sync elsewhere takes the second one now.
        with MunicipalityLease(store, second, SyncOwner("minutes", trigger="ui"), stale_after=3):  # heartbeats as the CLI expects
            output, _ = everyone.communicate(timeout=300)
    finally:
        everyone.kill()
        everyone.wait()
    assert everyone.returncode == 3, output
    assert f"SKIPPED: {second}/agenda (another sync took {second} while this command ran" in output
    assert "FAILED" not in output and "1 of 1 partitions synced and verified" in output
    assert_equals_upstream(store, replica_root, first, "agenda")
