"""A real Dagster deployment for end-to-end tests: `dagster-daemon`, `dagster-webserver` (GraphQL,
as the UI uses it) and the webhook receiver, as subprocesses sharing one temporary DAGSTER_HOME that
holds a copy of the repository's dagster.yaml (run queue with the per-municipality tag limit, run
retries; only the queue's dequeue interval is lowered, to 1 s).

    with running_stack(tmp_path, replica, store_url, webserver=True) as stack:  # or the fixture below
        event_id = stack.send_webhook("oakland.ca", {"name": "Oakland", "pages": 10})
        stack.wait_for_sensor_cursor(event_id)  # the sensor read it and submitted its runs
        runs = stack.runs("oakland.ca", trigger="webhook")

Every wait polls a condition against a deadline (no fixed sleeps) and fails early, with the tail of
the process logs, if a process of the stack died. stop() terminates each process group, waits, then
kills what is left (code servers and run workers included).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import httpx
import sqlalchemy as sa
import yaml
from dagster._core.scheduler.instigation import InstigatorState, InstigatorTick, InstigatorType

from civicband_pipelines.store import MeetingStore

from .pg_server import free_port

REPO = Path(__file__).resolve().parents[1]
MODULE = "civicband_pipelines.definitions"
BIN = Path(sys.executable).parent
START_TIMEOUT = 180.0  # loading the code location on 2 busy cores can be slow
WEBHOOK_SECRET = "e2e-webhook-secret"
MUNICIPALITY_TAG = "dagster/partition/municipality"
DOCUMENT_TYPE_TAG = "dagster/partition/document_type"
SYNC_STEP = "meeting_pages"  # the step that holds the municipality lease while it syncs
BUSY = "Backfill already in progress for"  # MunicipalityBusy: the sync refused to start, did nothing
BATCH_LOG = re.compile(r": batch \d+: ")  # sync.py logs this after each committed batch
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


@dataclass(frozen=True)
class SyncInterval:
    """When a run's sync held its municipality (see DagsterStack.sync_interval) and how it ended."""

    run_id: str
    municipality: str
    document_type: str
    trigger: str
    start: float
    end: float
    succeeded: bool
    error: str = ""  # the run's failure, if it failed

    def overlaps(self, other: "SyncInterval") -> bool:
        return self.start < other.end and other.start < self.end


@dataclass
class DagsterStack:
    root: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    webserver_url: str | None = None
    receiver_url: str | None = None
    _instance: dg.DagsterInstance | None = None
    _store: MeetingStore | None = None

    # -- processes ----------------------------------------------------------------------------------

    @property
    def dagster_home(self) -> Path:
        return Path(self.env["DAGSTER_HOME"])

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """A child in its own process group (so stop() reaches its code servers and run workers)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(args, env=env or self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes[name] = process
        return process

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def logs_tail(self, lines: int = 25) -> str:
        return "\n".join(f"--- {name} ---\n{self.log_tail(name, lines)}" for name in self.processes)

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 60.0):
        """Poll condition() until truthy; fail at the deadline or as soon as a stack process died."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if value := condition():
                    return value
            except (httpx.HTTPError, OSError, sa.exc.OperationalError):  # not up yet; SQLite busy
                pass
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                state = f"{', '.join(dead)} exited" if dead else f"timed out after {timeout:.0f} s"
                raise AssertionError(f"waiting for {what}: {state}\n{self.logs_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every process group (newest first), wait, then SIGKILL whatever is left."""
        if self._instance is not None:
            self._instance.dispose()
            self._instance = None
        if self._store is not None:
            self._store.dispose()
            self._store = None
        for process in reversed(self.processes.values()):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in reversed(self.processes.values()):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # grandchildren too: code servers, run workers
            process.wait()
        self.processes.clear()

    # -- the Dagster instance (same DAGSTER_HOME as the daemon) ---------------------------------------

    @property
    def store(self) -> MeetingStore:
        """The stack's store, as the daemon's runs and the receiver see it."""
        if self._store is None:
            self._store = MeetingStore(self.env["CIVICBAND_DATABASE_URL"])
        return self._store

    @property
    def instance(self) -> dg.DagsterInstance:
        if self._instance is None:
            self._instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        return self._instance

    def start_daemon(self) -> None:
        self.start("daemon", [str(BIN / "dagster-daemon"), "run", "-m", MODULE])

    def wait_daemon_ready(self, since: float, timeout: float = START_TIMEOUT) -> None:
        """Every required daemon has heartbeaten since `since` and the webhook sensor has ticked."""
        def ready() -> bool:
            beats = self.instance.get_daemon_heartbeats()
            required = self.instance.get_required_daemon_types()
            return all(t in beats and beats[t].timestamp >= since for t in required) and bool(
                self.sensor_ticks("webhook_sensor", limit=1)
            )

        self.wait_for(ready, "the daemon (heartbeats and a first webhook_sensor tick)", timeout)

    def start_webserver(self) -> None:
        port = free_port()
        self.webserver_url = f"http://127.0.0.1:{port}"
        self.start("webserver", [str(BIN / "dagster-webserver"), "-m", MODULE, "-h", "127.0.0.1", "-p", str(port)])

    def wait_webserver_ready(self, timeout: float = START_TIMEOUT) -> None:
        query = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"

        def ready() -> bool:
            nodes = self.graphql(query).get("repositoriesOrError", {}).get("nodes")
            return bool(nodes)

        self.wait_for(ready, "the webserver's GraphQL endpoint", timeout)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        assert self.webserver_url, "the stack runs without the webserver"
        answer = httpx.post(f"{self.webserver_url}/graphql", json={"query": query, "variables": variables or {}},
                            timeout=60).json()
        if answer.get("errors"):
            raise AssertionError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    # -- the webhook receiver --------------------------------------------------------------------------

    def start_receiver(self) -> None:
        port = free_port()
        self.receiver_url = f"http://127.0.0.1:{port}"
        self.start("webhooks", [sys.executable, "-m", "civicband_pipelines.cli", "webhooks", "serve",
                                "--host", "127.0.0.1", "--port", str(port)],
                   env={**self.env, "CIVICBAND_WEBHOOK_SECRET": WEBHOOK_SECRET})

    def wait_receiver_ready(self, timeout: float = START_TIMEOUT) -> None:
        self.wait_for(lambda: httpx.get(f"{self.receiver_url}/healthz", timeout=5).status_code == 200,
                      "the webhook receiver's /healthz", timeout)

    def send_webhook(self, subdomain: str, body: dict, expect_action: str | None = None) -> int:
        """PUT the update webhook as civic.band's build pipeline does; returns the stored event's id."""
        response = httpx.put(f"{self.receiver_url}/munis/api/update/{subdomain}/", content=json.dumps(body),
                             headers={"Authorization": f"Bearer {WEBHOOK_SECRET}", "Content-Type": "application/json"},
                             timeout=30)
        assert response.status_code in (200, 201), response.text
        if expect_action:
            assert response.json()["action"] == expect_action, response.text
        return self.webhook_events(subdomain)[-1]["id"]

    def webhook_events(self, subdomain: str) -> list[dict]:
        return [e for e in self.store.webhook_events_after(0, limit=100_000) if e["subdomain"] == subdomain]

    # -- sensors -----------------------------------------------------------------------------------------

    def sensor_state(self, name: str) -> InstigatorState | None:
        states = self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        return next((s for s in states if s.instigator_name == name), None)

    def sensor_ticks(self, name: str, limit: int | None = None) -> list[InstigatorTick]:
        state = self.sensor_state(name)
        if state is None:
            return []
        return list(self.instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=limit))

    def sensor_cursor(self, name: str = "webhook_sensor") -> int:
        """The cursor the sensor stored at the end of its last finished tick (after submitting its runs)."""
        state = self.sensor_state(name)
        data = state.instigator_data if state else None
        return int(getattr(data, "cursor", None) or 0)

    def wait_for_sensor_cursor(self, event_id: int, timeout: float = 120.0) -> None:
        """Wait until webhook_sensor has finished a tick that read webhook events up to `event_id`."""
        self.wait_for(lambda: self.sensor_cursor() >= event_id, f"webhook_sensor to pass event {event_id}", timeout)

    # -- runs ----------------------------------------------------------------------------------------------

    def runs(self, municipality: str | None = None, document_type: str | None = None, *,
             trigger: str | None = None, tags: dict[str, str] | None = None) -> list[dg.DagsterRun]:
        """Runs of the instance, oldest first, by partition, trigger (civicband/trigger) and other tags."""
        wanted = dict(tags or {})
        if municipality:
            wanted[MUNICIPALITY_TAG] = municipality
        if document_type:
            wanted[DOCUMENT_TYPE_TAG] = document_type
        if trigger:
            wanted["civicband/trigger"] = trigger
        return list(reversed(self.instance.get_runs(filters=dg.RunsFilter(tags=wanted))))

    def wait_for_runs(self, condition: Callable[[list[dg.DagsterRun]], bool], what: str, timeout: float = 120.0,
                      **filters) -> list[dg.DagsterRun]:
        def check():
            runs = self.runs(**filters)
            return runs if condition(runs) else None

        return self.wait_for(check, what, timeout)

    def wait_until_finished(self, runs: list[dg.DagsterRun], timeout: float = 120.0) -> list[dg.DagsterRun]:
        ids = [r.run_id for r in runs]

        def check():
            now = [self.instance.get_run_by_id(i) for i in ids]
            return now if all(r.status in FINISHED for r in now) else None

        return self.wait_for(check, f"{len(ids)} runs to finish", timeout)

    def settled(self, municipality: str) -> bool:
        """Every run of the municipality finished, and every failed run Dagster will retry was retried
        (the CLI's in-process runs have no code location origin: Dagster cannot retry them)."""
        return all(r.status in FINISHED and not (r.is_complete_and_waiting_to_retry and r.remote_job_origin)
                   for r in self.runs(municipality))

    def run_failure(self, run_id: str) -> str:
        """The errors of a run's failure events (with their causes), for assertions and messages."""
        types = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
        return "\n".join(_error_text(e) for e in self.instance.all_logs(run_id, of_type=types))

    def sync_interval(self, run: dg.DagsterRun) -> SyncInterval | None:
        """When the run's sync held its municipality, from the run's event log; None if it never synced.

        The sync takes the lease, starts its clock, and logs "batch N" after each committed batch
        (the last one completes the sync in the same transaction), then releases the lease. So it
        ran from (last batch log - the elapsed time it reports) to the last batch log, give or take
        the milliseconds of taking and releasing the lease. (The step's own start and end are no
        good: resource setup before the lease and event writes after it may overlap another sync.)
        """
        entries = self.instance.all_logs(run.run_id)
        batches = [e for e in entries if e.step_key == SYNC_STEP and e.dagster_event is None
                   and BATCH_LOG.search(e.user_message or "")]
        failures = [e for e in entries if e.dagster_event and e.dagster_event.event_type in
                    (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE)]
        if not batches:
            return None
        end = batches[-1].timestamp
        done = [e for e in entries if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION]
        if done:
            elapsed = done[-1].asset_materialization.metadata["elapsed_seconds"].value
            start = min(end - elapsed, batches[0].timestamp)
        else:  # failed mid-sync: from its first batch
            start = batches[0].timestamp
        return SyncInterval(
            run.run_id, run.tags[MUNICIPALITY_TAG], run.tags[DOCUMENT_TYPE_TAG], run.tags.get("civicband/trigger", "ui"),
            start, end, succeeded=bool(done), error="\n".join(_error_text(e) for e in failures),
        )

    def refused(self, run: dg.DagsterRun) -> bool:
        """The run failed at once because another sync held its municipality (it synced nothing)."""
        return run.status == dg.DagsterRunStatus.FAILURE and BUSY in self.run_failure(run.run_id)

    def materialization(self, run_id: str) -> dict:
        """The metadata of the run's meeting_pages materialization."""
        events = self.instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert len(events) == 1, f"run {run_id}: {len(events)} materializations"
        return {k: v.value for k, v in events[0].asset_materialization.metadata.items()}

    # -- the CLI against the same instance and store ---------------------------------------------------

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "civicband_pipelines.cli", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def start_cli(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "civicband_pipelines.cli", *args], env=self.env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)


def _error_text(entry) -> str:
    event = entry.dagster_event
    error = getattr(event.event_specific_data, "error", None) if event else None
    return error.to_string() if error else (entry.message or "")


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # start_new_session: the group id is the child's pid
    except ProcessLookupError:
        pass


def stack_env(root: Path, base_url_template: str, database_url: str) -> dict[str, str]:
    dagster_home = root / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    # Only latency differs from the repository's file: the queue looks every second, not every 5 s.
    config["run_queue"]["dequeue_interval_seconds"] = 1
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CIVICBAND_", "DAGSTER_"))}  # nothing from the developer's own setup
    env.update(
        DAGSTER_HOME=str(dagster_home),
        CIVICBAND_HOME=str(root / "civicband_home"),
        CIVICBAND_DATABASE_URL=database_url,
        CIVICBAND_BASE_URL=base_url_template,
        CIVICBAND_SENSOR_INTERVAL_SECONDS="1",
        CIVICBAND_LEASE_STALE_SECONDS="3",
        CIVICBAND_HTTP_BACKOFF="0.01",
        CIVICBAND_HTTP_TIMEOUT="30",
        PYTHONUNBUFFERED="1",
    )
    return env


@contextlib.contextmanager
def running_stack(root: Path, replica, database_url: str, *, webserver: bool = False,
                  receiver: bool = True) -> Iterator[DagsterStack]:
    """The daemon (+ webserver, + webhook receiver), started together; ready once every part answers."""
    root = Path(root)
    stack = DagsterStack(root, stack_env(root, replica.base_url_template, database_url))
    try:
        # The store's tables first (the receiver creates them too; one creator avoids a migration race).
        stack.store.municipality_subdomains()
        # Dagster's storage too: processes creating the same SQLite storage at once trip its migrations.
        stack.instance.get_runs(limit=1)
        since = time.time()
        stack.start_daemon()
        if webserver:
            stack.start_webserver()
        if receiver:
            stack.start_receiver()
            stack.wait_receiver_ready()
        if webserver:
            stack.wait_webserver_ready()
        stack.wait_daemon_ready(since)
        yield stack
    finally:
        stack.stop()
