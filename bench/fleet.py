"""Fleet orchestration: a UI-style backfill of N small partitions through a real Dagster daemon.

Per variant: a fresh DAGSTER_HOME with the repo's dagster.yaml (plus the variant's overrides), a
fresh meetings store, `dagster-daemon run` and `dagster-webserver` subprocesses on a workspace.yaml
loading the variant's code location (the repo's by default), the municipalities registered as dynamic
partitions, then the backfill launched
with the UI's GraphQL mutation (`launchPartitionBackfill`, a job backfill of meeting_pages_job) and
the runs polled until all are finished.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from common import REPO, VENV_BIN, start_group, stop_group, wait_until

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
from dagster._core.storage.tags import BACKFILL_ID_TAG, PARTITION_NAME_TAG

from civicband_pipelines.client import CivicBandClient
from civicband_pipelines.config import ClientSettings
from civicband_pipelines.partitions import MUNICIPALITY, partition_key
from civicband_pipelines.store import MeetingStore
from civicband_pipelines.sync import sync_partition
from civicband_pipelines.verify import verify_counts
from civicband_pipelines_tests.pg_server import free_port

JOB = "meeting_pages_job"
PARTITION_SET = f"{JOB}_partition_set"
TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
START_TIMEOUT = 120


@dataclass(frozen=True)
class Variant:
    description: str
    run_queue: dict = field(default_factory=dict)  # merged into dagster.yaml's run_queue
    instance: dict = field(default_factory=dict)  # other top-level dagster.yaml keys
    run_config: dict | None = None  # the backfill's run config (the UI's launchpad)
    dagster_defaults: tuple = ()  # run_queue keys removed, i.e. left at Dagster's default
    code_location: tuple[str, Path] = ("civicband_pipelines.definitions", REPO)  # (module, working directory)

    def dagster_yaml(self) -> dict:
        config = yaml.safe_load((REPO / "dagster.yaml").read_text())
        queue = {k: v for k, v in config["run_queue"].items() if k not in self.dagster_defaults}
        config["run_queue"] = {**queue, **self.run_queue}
        return {**config, **copy.deepcopy(self.instance)}


DEQUEUE_SETTINGS = ("dequeue_use_threads", "dequeue_num_workers", "dequeue_interval_seconds")
VARIANTS = {
    "dagster_defaults": Variant(
        "Dagster's defaults: multiprocess executor (a process per step), one launch at a time every 5 s",
        dagster_defaults=DEQUEUE_SETTINGS, code_location=("fleet_dagster_defaults", REPO / "bench"),
    ),
    "default_queue": Variant("repo without its dequeue settings (one launch at a time, every 5 s)",
                             dagster_defaults=DEQUEUE_SETTINGS),
    "repo": Variant("dagster.yaml as in the repo (see its run_queue above)"),
    "repo_4": Variant("repo + max_concurrent_runs 4", {"max_concurrent_runs": 4}),
    "repo_16": Variant("repo + max_concurrent_runs 16", {"max_concurrent_runs": 16}),
    "repo_backfill_threads": Variant(
        "repo + backfills use_threads, num_workers 4, num_submit_workers 4",
        instance={"backfills": {"use_threads": True, "num_workers": 4, "num_submit_workers": 4}},
    ),
}
DEFAULT_VARIANTS = ("dagster_defaults", "default_queue", "repo")


def measure_fleet(base_url: str, work: Path, names: list[str], n: int, variants: list[str], timeout: float, log) -> dict:
    keys = [str(partition_key(m, d)) for d in ("agenda", "minutes") for m in names][:n]
    pure = measure_pure_sync(base_url, work / "pure", keys, log)
    repo_queue = {k: v for k, v in Variant("").dagster_yaml()["run_queue"].items() if k != "tag_concurrency_limits"}
    results = {"partitions": len(keys), "pure": pure, "variants": {}, "timeout": timeout, "repo_run_queue": repo_queue}
    for i, name in enumerate(variants):
        log(f"fleet variant {name}: {len(keys)} partitions")
        # The first variant is launched like a user would, into a running daemon (so it waits for the backfill
        # daemon's next loop); the others are launched just before the daemon starts, which saves that wait.
        try:
            result = run_variant(VARIANTS[name], base_url, work / name, names, keys, timeout, into_running_daemon=i == 0)
        except Exception as error:  # noqa: BLE001 - one broken variant must not cost the others
            log(f"  FAILED: {type(error).__name__}: {error}\n{_log_tail(work / name / 'daemon.log')}")
            results["variants"][name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        result["overhead_per_partition"] = result["wall_for_n"] / len(keys) - pure["per_partition_seconds"]
        result["overhead_excl_pickup"] = result["seconds_per_partition"] - pure["per_partition_seconds"]
        results["variants"][name] = result
        partial = f" (stopped at the deadline: {result['finished']}/{len(keys)} finished)" if result["timed_out"] else ""
        log(f"  wall {result['wall_for_n']:.1f} s{' (extrapolated)' if partial else ''}, "
            f"{result['succeeded']} succeeded, overhead {result['overhead_per_partition']:.2f} s/partition{partial}")
    return results


def measure_pure_sync(base_url: str, work: Path, keys: list[str], log, sample: int = 20) -> dict:
    """The work itself, without Dagster: sync + exact count check of each partition, in one process."""
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{work / 'meetings.db'}"
    start = time.perf_counter()
    store = MeetingStore(url)
    open_seconds = time.perf_counter() - start
    client = CivicBandClient(ClientSettings(base_url=base_url, retries=0))
    sample_keys = keys[:sample]
    start = time.perf_counter()
    for key in sample_keys:
        document_type, municipality = key.split("|")
        sync_partition(client, store, municipality, document_type)
        verify_counts(client, store, municipality, document_type)
    per_partition = (time.perf_counter() - start) / len(sample_keys)
    client.close()
    store.dispose()
    reopen = time.perf_counter()
    MeetingStore(url).dispose()  # what each run process pays once: engine + migration check
    log(f"  pure sync + check: {per_partition * 1000:.0f} ms/partition; opening a store {open_seconds * 1000:.0f} ms")
    return {"per_partition_seconds": per_partition, "store_create_seconds": open_seconds,
            "store_open_seconds": time.perf_counter() - reopen, "sample": len(sample_keys)}


class DagsterStack:
    """`dagster-daemon run` and `dagster-webserver` on one code location, for one DAGSTER_HOME."""

    def __init__(self, home: Path, env: dict, code_location: tuple[str, Path]):
        self.home, self.env = home, env
        module, directory = code_location
        workspace = {"load_from": [{"python_module": {"module_name": module, "working_directory": str(directory)}}]}
        (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
        self.workspace = ["-w", str(home / "workspace.yaml")]
        self.port = free_port()
        self.graphql = f"http://127.0.0.1:{self.port}/graphql"
        self.daemon = self.web = None

    def start_webserver(self) -> tuple[str, str]:
        """Start the webserver; returns (location, repository) once the code location is loaded."""
        cmd = [str(VENV_BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), *self.workspace]
        self.web = start_group(cmd, self.home / "webserver.log", self.env)
        return wait_until(lambda: loaded_repository(self.graphql), START_TIMEOUT, 0.5, "the webserver")

    def start_daemon(self) -> None:
        cmd = [str(VENV_BIN / "dagster-daemon"), "run", *self.workspace]
        self.daemon = start_group(cmd, self.home / "daemon.log", self.env)

    def stop(self) -> None:
        stop_group(self.web)
        stop_group(self.daemon)  # its process group holds the code server and any run still going


def run_variant(variant: Variant, base_url: str, home: Path, names: list[str], keys: list[str], timeout: float,
                into_running_daemon: bool) -> dict:
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(variant.dagster_yaml()))
    env = {**os.environ, "DAGSTER_HOME": str(home), "CIVICBAND_BASE_URL": base_url,
           "CIVICBAND_DATABASE_URL": f"sqlite:///{home / 'meetings.db'}", "CIVICBAND_HOME": str(home / "civicband"),
           "CIVICBAND_HTTP_RETRIES": "1"}
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions(MUNICIPALITY, names)
    stack = DagsterStack(home, env, variant.code_location)
    try:
        location, repository = stack.start_webserver()
        if into_running_daemon:
            stack.start_daemon()
            wait_until(lambda: daemons_running(instance), START_TIMEOUT, 0.5, "daemon heartbeats")
        launched = time.time()
        backfill_id = launch_backfill(stack.graphql, location, repository, keys, variant.run_config)
        if not into_running_daemon:
            stack.start_daemon()
        runs = RunsFilter(tags={BACKFILL_ID_TAG: backfill_id})
        wait_until(lambda: instance.get_runs_count(runs), START_TIMEOUT + 40, 0.5, "the backfill's first run")
        try:  # the deadline counts from the first run, so every variant gets the same time to run
            records, timed_out = wait_until(lambda: finished_runs(instance, runs, len(keys)), timeout, 1.0, "runs"), False
        except TimeoutError:
            records, timed_out = instance.get_run_records(runs), True
        result = summarize(records, launched, len(keys))
        return result | launch_phases(instance, records) | {"timed_out": timed_out,
                                                             "failures": failure_messages(instance, records)}
    finally:
        stack.stop()
        instance.dispose()


def loaded_repository(graphql: str) -> tuple[str, str] | None:
    query = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { ... on RepositoryLocation { repositories { name } } } } } } }"""
    try:
        body = httpx.post(graphql, json={"query": query}, timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return None
    for entry in body["data"]["workspaceOrError"].get("locationEntries", []):
        location = entry.get("locationOrLoadError") or {}
        if entry["loadStatus"] == "LOADED" and location.get("repositories"):
            return entry["name"], location["repositories"][0]["name"]
    return None


def daemons_running(instance: dg.DagsterInstance) -> bool:
    beats = instance.get_daemon_heartbeats()
    return {"BACKFILL", "QUEUED_RUN_COORDINATOR"} <= set(beats)


def launch_backfill(graphql: str, location: str, repository: str, keys: list[str], run_config: dict | None) -> str:
    mutation = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
        __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
    params = {
        "selector": {"partitionSetName": PARTITION_SET,
                     "repositorySelector": {"repositoryLocationName": location, "repositoryName": repository}},
        "partitionNames": keys,
    }
    if run_config:
        params["runConfigData"] = run_config
    body = httpx.post(graphql, json={"query": mutation, "variables": {"params": params}}, timeout=60).json()
    answer = body.get("data", {}).get("launchPartitionBackfill") or {}
    if answer.get("__typename") != "LaunchBackfillSuccess":
        raise RuntimeError(f"backfill not launched: {body}")
    return answer["backfillId"]


def finished_runs(instance: dg.DagsterInstance, runs: RunsFilter, n: int):
    """The backfill's run records once every partition has a finished run and none is still going."""
    records = instance.get_run_records(runs)
    done = {r.dagster_run.tags.get(PARTITION_NAME_TAG) for r in records if r.dagster_run.status in TERMINAL}
    active = [r for r in records if r.dagster_run.status not in TERMINAL]
    return records if len(done) >= n and not active else None


def summarize(records, launched: float, n: int) -> dict:
    """Wall time of the backfill; if it was stopped at the deadline, extrapolated from the runs that finished."""
    finished = [r for r in records if r.dagster_run.status in TERMINAL and r.end_time]
    created = [_timestamp(r.create_timestamp) for r in records]
    durations = [r.end_time - r.start_time for r in finished if r.start_time]
    first_created = min(created, default=launched)
    last_end = max((r.end_time for r in finished), default=time.time())
    runs_wall = last_end - first_created
    pickup = first_created - launched
    per_partition = runs_wall / len(finished) if finished else float("nan")
    complete = len({r.dagster_run.tags.get(PARTITION_NAME_TAG) for r in finished}) >= n
    return {
        "wall_seconds": last_end - launched,
        "wall_for_n": last_end - launched if complete else pickup + n * per_partition,
        "pickup_seconds": pickup,  # until the first run exists (the backfill daemon's loop, or daemon start-up)
        "runs_wall_seconds": runs_wall,
        "seconds_per_partition": runs_wall / n if complete else per_partition,
        "runs": len(records),
        "finished": len(finished),
        "succeeded": sum(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in records),
        "failed": sum(r.dagster_run.status == DagsterRunStatus.FAILURE for r in records),
        "mean_run_seconds": statistics.fmean(durations) if durations else float("nan"),
        "mean_concurrency": sum(durations) / runs_wall if durations and runs_wall > 0 else float("nan"),
    }


def launch_phases(instance: dg.DagsterInstance, records) -> dict:
    """Mean time queued (created -> the daemon launches it) and starting (launch -> run worker started)."""
    queued, starting = [], []
    for record in records:
        events = instance.get_records_for_run(record.dagster_run.run_id, of_type=DagsterEventType.RUN_STARTING).records
        if events and record.start_time:
            launch = events[0].timestamp
            queued.append(launch - _timestamp(record.create_timestamp))
            starting.append(record.start_time - launch)
    return {"mean_queued_seconds": statistics.fmean(queued) if queued else float("nan"),
            "mean_starting_seconds": statistics.fmean(starting) if starting else float("nan")}


def failure_messages(instance: dg.DagsterInstance, records, limit: int = 3) -> list[str]:
    """Why runs failed: the first error of each of the first `limit` failed runs."""
    messages = []
    for record in [r for r in records if r.dagster_run.status == DagsterRunStatus.FAILURE][:limit]:
        failures = instance.all_logs(record.dagster_run.run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE})
        error = next((e.dagster_event.event_specific_data.error for e in failures
                      if getattr(e.dagster_event.event_specific_data, "error", None)), None)
        text = error.message.strip() if error else (failures[0].message if failures else "?")
        messages.append(f"{record.dagster_run.tags.get(PARTITION_NAME_TAG)}: {text[:300]}")
    return messages


def _log_tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _timestamp(value: dt.datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
