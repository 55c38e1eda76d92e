"""`civicband dev`: the whole local stack in one command, stopped cleanly with Ctrl-C.

Builds the demo civic.band replica, then starts it, the webhook receiver, the Dagster webserver and
the daemon (embedded default instance: SQLite under DIR), registers the demo municipalities and
prints the URLs. Everything lives in DIR (default ./.civicband-dev); logs are in DIR/logs.

    python -m civicband_pipelines.devstack [--dir .civicband-dev] [--port 3000] [--webhook-port 8080]
"""

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .replica.generate import DEMO_MUNICIPALITIES, build_demo

MODULE = "civicband_pipelines.definitions"
SECRET_ENV = "CIVICBAND_WEBHOOK_SECRET"  # as in webhooks.py (not imported: that pulls in the store)
START_TIMEOUT = 120.0  # seconds; the webserver and the daemon load the code location, slow on 2 cores
DAEMON_HEALTH = "{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"


class Stack:
    """Child processes in their own process groups (so Ctrl-C reaches only us); stop() ends them all."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.processes = root, env, []
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.root / "logs" / f"{name}.log", "ab") as log:
            process = subprocess.Popen(args, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes.append((name, process))
        return process

    def wait_until(self, name: str, condition, timeout: float = START_TIMEOUT):
        """Poll condition() until truthy; fail early (with the log's tail) if the process `name` dies."""
        process = dict(self.processes)[name]
        deadline = time.monotonic() + timeout
        while True:
            try:
                if value := condition():
                    return value
            except (httpx.HTTPError, OSError, ValueError, KeyError, TypeError):  # not up yet
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {process.returncode}" if process.poll() is not None else "timed out"
                raise RuntimeError(f"{name} did not become healthy ({state}); last log lines:\n{self.log_tail(name)}")
            time.sleep(0.25)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def dead(self) -> list[str]:
        return [name for name, process in self.processes if process.poll() is not None]

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every process group (newest first), wait, then SIGKILL whatever is left."""
        for _, process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # also ends grandchildren (code servers, run workers)
            process.wait()
        self.processes.clear()

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # start_new_session: the group id is the child's pid
    except ProcessLookupError:
        pass


def find_dagster_yaml() -> Path:
    """The repo's dagster.yaml: next to workspace.yaml in the current directory or the repo root."""
    for folder in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (folder / "dagster.yaml").is_file() and (folder / "workspace.yaml").is_file():
            return folder / "dagster.yaml"
    raise SystemExit("error: dagster.yaml not found: run this from the repository root (where workspace.yaml is)")


def prepare(root: Path) -> dict[str, str]:
    """Create DIR: the demo replica (if absent), DAGSTER_HOME with the repo's dagster.yaml; return the env."""
    root = root.resolve()
    replica = root / "replica"
    if not all((replica / m.subdomain / "meetings.db").exists() for m in DEMO_MUNICIPALITIES):
        build_demo(replica)
    dagster_home = root / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(find_dagster_yaml(), dagster_home / "dagster.yaml")
    # Secrets stay out of Dagster's processes: only the receiver gets its own; the replica needs none.
    env = {k: v for k, v in os.environ.items() if k not in (SECRET_ENV, "CIVICBAND_SERVICE_SECRET")}
    env.update(DAGSTER_HOME=str(dagster_home), CIVICBAND_HOME=str(root),
               CIVICBAND_DATABASE_URL=f"sqlite:///{root / 'meetings.db'}", PYTHONUNBUFFERED="1")
    return env


def webhook_secret(root: Path) -> str:
    """$CIVICBAND_WEBHOOK_SECRET, else DIR/webhook-secret (created once, mode 0600)."""
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    path = root / "webhook-secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def start_replica(stack: Stack) -> str:
    """Serve DIR/replica on a free port; sets CIVICBAND_BASE_URL in the stack's env; returns the URL."""
    ready = stack.root / "replica-ready.json"
    ready.unlink(missing_ok=True)
    stack.start("replica", [sys.executable, "-m", "civicband_pipelines.replica", "serve", "--dir",
                            str(stack.root / "replica"), "--port", "0", "--ready-file", str(ready)])
    url = stack.wait_until("replica", lambda: json.loads(ready.read_text())["url"])
    stack.wait_until("replica", lambda: httpx.get(url + "/-/health", timeout=2).status_code == 200)
    stack.env["CIVICBAND_BASE_URL"] = url + "/{subdomain}"
    return url


def start_receiver(stack: Stack, port: int, secret: str) -> str:
    _require_free(port, "--webhook-port")
    stack.start("webhooks", [sys.executable, "-m", "civicband_pipelines.cli", "webhooks", "serve",
                             "--host", "127.0.0.1", "--port", str(port)], env={**stack.env, SECRET_ENV: secret})
    url = f"http://127.0.0.1:{port}"
    stack.wait_until("webhooks", lambda: httpx.get(url + "/healthz", timeout=5).status_code == 200)
    return url


def start_dagster(stack: Stack, port: int) -> str:
    """The webserver and the daemon; returns once the UI answers and every required daemon is healthy."""
    _require_free(port, "--port")
    bindir = Path(sys.executable).parent
    # Create (or upgrade) the instance's SQLite storage first: the two racing to create it fail.
    with open(stack.root / "logs" / "instance-migrate.log", "ab") as log:
        done = subprocess.run([str(bindir / "dagster"), "instance", "migrate"], env=stack.env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=START_TIMEOUT)
    if done.returncode:
        raise RuntimeError(f"dagster instance migrate failed:\n{stack.log_tail('instance-migrate')}")
    stack.start("webserver", [str(bindir / "dagster-webserver"), "-m", MODULE, "-h", "127.0.0.1", "-p", str(port)])
    stack.start("daemon", [str(bindir / "dagster-daemon"), "run", "-m", MODULE])
    url = f"http://127.0.0.1:{port}"
    stack.wait_until("webserver", lambda: httpx.get(url + "/server_info", timeout=5).status_code == 200)
    stack.wait_until("daemon", lambda: daemons_healthy(url))
    return url


def daemons_healthy(url: str) -> bool:
    answer = httpx.post(url + "/graphql", json={"query": DAEMON_HEALTH}, timeout=10).json()
    statuses = answer["data"]["instance"]["daemonHealth"]["allDaemonStatuses"]
    return all(s["healthy"] for s in statuses if s["required"])


def register(env: dict[str, str], subdomains: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "civicband_pipelines.cli", "municipalities", "add", *subdomains],
                   env=env, check=True, timeout=120, stdin=subprocess.DEVNULL)


def _require_free(port: int, option: str) -> None:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise SystemExit(f"error: port {port} is in use: choose another with {option}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="civicband dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(".civicband-dev"), help="default: ./.civicband-dev")
    parser.add_argument("--port", type=int, default=3000, help="Dagster UI port (default 3000)")
    parser.add_argument("--webhook-port", type=int, default=8080, help="webhook receiver port (default 8080)")
    return parser


def _cli_env(env: dict) -> str:
    names = ("CIVICBAND_HOME", "DAGSTER_HOME", "CIVICBAND_DATABASE_URL", "CIVICBAND_BASE_URL")
    return " ".join(f"{name}={shlex.quote(env[name])}" for name in names)


def require_datasette() -> None:
    """The replica is Datasette, in the `test` extra (a plain `pip install .` serves no replica)."""
    try:
        import datasette  # noqa: F401
    except ImportError:
        raise SystemExit("error: the local civic.band replica needs Datasette, from the project's test extra: "
                         "pip install -e '.[test]' (scripts/demo installs it)") from None


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    require_datasette()  # before building anything in DIR
    root = args.dir.resolve()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops us as Ctrl-C does
    env = prepare(root)
    secret_hint = f"${SECRET_ENV}" if os.environ.get(SECRET_ENV) else f"$(cat {root / 'webhook-secret'})"
    secret = webhook_secret(root)
    stack = Stack(root, env)
    try:
        print(f"starting the local stack in {root} (logs: {root / 'logs'})", flush=True)
        replica = start_replica(stack)
        receiver = start_receiver(stack, args.webhook_port, secret)
        ui = start_dagster(stack, args.port)
        register(env, [m.subdomain for m in DEMO_MUNICIPALITIES])
        example = DEMO_MUNICIPALITIES[0]
        print(f"\nDagster UI:       {ui}\n"
              f"Webhook receiver: {receiver}/munis/api/update/<subdomain>/\n"
              f"civic.band replica: {replica}/<subdomain>\n\n"
              f"Send a webhook:\n  curl -X POST {receiver}/munis/api/update/{example.subdomain}/ \\\n"
              f"    -H \"Authorization: Bearer {secret_hint}\" -H 'Content-Type: application/json' \\\n"
              f"    -d '{{\"name\": \"{example.name}\", \"state\": \"{example.state}\", \"pages\": 1}}'\n\n"
              f"The CLI against this stack:\n  {_cli_env(stack.env)} {Path(sys.executable).parent / 'civicband'} status\n\n"
              "Press Ctrl-C to stop.", flush=True)
        while not (dead := stack.dead()):
            time.sleep(0.5)
        print(f"error: {', '.join(dead)} stopped; last log lines:\n{stack.log_tail(dead[0])}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    except (RuntimeError, subprocess.SubprocessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan the children
        stack.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
