"""dagster.postgres.yaml: a Dagster instance whose storage lives in a real PostgreSQL server."""

import shutil
import uuid
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from civicband_pipelines.partitions import MUNICIPALITY

from . import pg_server

CONFIG = Path(__file__).resolve().parents[1] / "dagster.postgres.yaml"


@pytest.fixture(scope="module")
def instance(postgres_server_url, tmp_path_factory):
    """DagsterInstance.get() with DAGSTER_HOME holding dagster.postgres.yaml, on a fresh database."""
    # Module-scoped: creating Dagster's storage tables takes about a second.
    url = sa.engine.make_url(pg_server.create_database(postgres_server_url, f"dagster_{uuid.uuid4().hex[:12]}"))
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(CONFIG, home / "dagster.yaml")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAGSTER_HOME", str(home))
        for name, value in {"HOST": url.host, "PORT": url.port, "USER": url.username,
                            "PASSWORD": url.password or "", "DB": url.database}.items():
            env.setenv(f"DAGSTER_PG_{name}", str(value))
        instance = dg.DagsterInstance.get()
        yield instance
        instance.dispose()
    pg_server.drop_database(url.render_as_string(hide_password=False))


@dg.op
def hello() -> int:
    return 1


@dg.job
def hello_job():
    hello()


def test_storage_is_postgres(instance):
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)


def test_run_queue_and_retries_are_configured(instance):
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert {"key": "dagster/partition/municipality", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 2


def test_dynamic_partitions(instance):
    instance.add_dynamic_partitions(MUNICIPALITY, ["oakland.ca", "alameda.ca"])
    assert sorted(instance.get_dynamic_partitions(MUNICIPALITY)) == ["alameda.ca", "oakland.ca"]


def test_run_is_stored(instance):
    result = hello_job.execute_in_process(instance=instance)
    assert result.success
    assert instance.get_run_by_id(result.run_id).is_success
    assert any(e.is_dagster_event for e in instance.all_logs(result.run_id))
