"""The README's set-up commands, run as a new user would (the demo in a scratch directory)."""

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_names_the_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/demo" in readme and "scripts/test" in readme
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_demo_backfills_and_verifies_every_demo_partition(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIVICBAND_", "DAGSTER_"))}
    env["DEMO_DIR"] = str(tmp_path / "demo")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "demo")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "8 of 8 partitions synced and verified" in done.stdout
    actual = [int(n) for n in re.findall(r": OK expected \d+, actual (\d+), rejected 5, missing 0, extra 0", done.stdout)]
    assert len(actual) == 8
    with contextlib.closing(sqlite3.connect(tmp_path / "demo" / "meetings.db")) as conn:  # the store it documents
        assert conn.execute("SELECT count(*) FROM meeting_pages").fetchone()[0] == sum(actual) > 0
    # The UI command it prints sees the demo's instance and store: coverage_report, materialized with that
    # command's settings, has the 8 partitions it verified.
    hint = done.stdout.strip().splitlines()[-1].split()
    settings = dict(word.split("=", 1) for word in hint[:hint.index(".venv/bin/dagster")])
    assert set(settings) == {"CIVICBAND_HOME", "CIVICBAND_DATABASE_URL", "DAGSTER_HOME"}
    report = subprocess.run([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "--select", "coverage_report",
                             *hint[hint.index("-m"):]], env=env | settings, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    rows = (Path(settings["CIVICBAND_HOME"]) / "coverage.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and all(",True," in row for row in rows[1:]), rows
