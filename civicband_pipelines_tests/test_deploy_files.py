"""Sanity checks of the deployment files (the Helm chart itself cannot be fetched in tests)."""

import argparse
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRET = "civicband-secrets"
MUNICIPALITY_LIMIT = {"key": "dagster/partition/municipality", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
WEBHOOK_COMMAND = ["civicband", "webhooks", "serve", "--host", "0.0.0.0", "--port", "8080"]


def load(path: str):
    return yaml.safe_load((ROOT / path).read_text())


@pytest.fixture(scope="module")
def values() -> dict:
    return load("deploy/helm/values.yaml")


@pytest.fixture(scope="module")
def webhook() -> dict:
    docs = list(yaml.safe_load_all((ROOT / "deploy/helm/webhook-receiver.yaml").read_text()))
    return {doc["kind"]: doc for doc in docs}


@pytest.fixture(scope="module")
def local_instance() -> dict:
    return load("dagster.yaml")


def code_location(values: dict) -> dict:
    [deployment] = values["dagster-user-deployments"]["deployments"]
    return deployment


def test_code_location_serves_the_definitions_module(values):
    deployment = code_location(values)
    assert values["dagster-user-deployments"]["enabled"]
    assert deployment["codeServerArgs"] == ["-m", "civicband_pipelines.definitions"]
    assert importlib.util.find_spec("civicband_pipelines.definitions") is not None
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]  # run pods get the secrets too
    assert {"name": SECRET} in deployment["envSecrets"]


def test_runs_are_kubernetes_jobs(values):
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert "k8sRunLauncher" in values["runLauncher"]["config"]


def test_storage_is_external_postgres(values):
    postgres = values["postgresql"]
    assert postgres["enabled"] is False and postgres["postgresqlHost"]
    assert postgres["postgresqlScheme"] == "postgresql+psycopg2"
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]


def test_run_queue_and_retries_match_the_local_instance(values, local_instance):
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    queue = coordinator["config"]["queuedRunCoordinator"]
    assert MUNICIPALITY_LIMIT in queue["tagConcurrencyLimits"]
    assert queue["tagConcurrencyLimits"] == local_instance["run_queue"]["tag_concurrency_limits"]
    for key in ("max_concurrent_runs", "dequeue_use_threads", "dequeue_num_workers", "dequeue_interval_seconds"):
        helm_key = "".join(word.capitalize() if i else word for i, word in enumerate(key.split("_")))
        assert queue[helm_key] == local_instance["run_queue"][key], key
    retries = local_instance["run_retries"]
    assert daemon["runRetries"] == {
        "enabled": True, "maxRetries": retries["max_retries"], "retryOnAssetOrOpFailure": retries["retry_on_asset_or_op_failure"],
    }
    assert values["telemetry"]["enabled"] is False


def test_postgres_instance_matches_the_local_instance(local_instance):
    instance = load("dagster.postgres.yaml")
    db = instance["storage"]["postgres"]["postgres_db"]
    assert db["scheme"] == "postgresql+psycopg2"
    for key, env in {"hostname": "HOST", "port": "PORT", "username": "USER", "password": "PASSWORD", "db_name": "DB"}.items():
        assert db[key] == {"env": f"DAGSTER_PG_{env}"}
    for block in ("run_queue", "run_retries", "telemetry"):
        assert instance[block] == local_instance[block]


def test_webhook_receiver_deployment(webhook, values):
    pod = webhook["Deployment"]["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["command"] == WEBHOOK_COMMAND
    assert container["image"].startswith(code_location(values)["image"]["repository"] + ":")
    assert {"secretRef": {"name": SECRET}} in container["envFrom"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert webhook["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_webhook_receiver_service(webhook):
    service = webhook["Service"]["spec"]
    pod_labels = webhook["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in service["ports"]] == ["http"]


def test_webhook_command_is_accepted_by_the_cli():
    from civicband_pipelines import cli

    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "webhooks" not in commands:
        pytest.skip("the CLI has no `webhooks` command yet")
    args = parser.parse_args(WEBHOOK_COMMAND[1:])
    assert (args.host, int(args.port)) == ("0.0.0.0", 8080)


def test_run_pods_are_sized_by_the_run_launcher_alone(values):
    # With includeConfigInLaunchedRuns, a code location's resources go to its run pods and replace
    # the launcher's runK8sConfig (dagster-k8s K8sContainerContext merge).
    assert "resources" not in code_location(values)
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]["resources"]["limits"]


def test_the_image_installs_the_package_with_the_matching_dagster_k8s():
    dockerfile = (ROOT / "Dockerfile").read_text()
    [postgres_pin] = re.findall(r'"dagster-postgres==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert "COPY pyproject.toml" in dockerfile and "COPY civicband_pipelines" in dockerfile
    assert f'"dagster-k8s=={postgres_pin}"' in dockerfile  # the libraries share their version
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".demo"} <= set(ignored)
