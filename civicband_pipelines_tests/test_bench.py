"""The benchmark harness (bench/run.py) runs end to end on a tiny replica and writes its report.

Only what does not depend on the machine's speed is asserted: the report's sections, and that every
sync it measured verified exactly with a one-request count. The speed targets are the harness's to report.
"""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("## Machine", "## Fetch ceiling", "## Sync vs ceiling vs naive", "## Re-sync", "## Memory of the sync process",
            "## Verification cost", "## Targets")


def test_the_benchmark_runs_and_reports_every_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    args = ["--pages", "2000", "--small", "1000", "--naive-slice", "100", "--fleet", "0", "--latency-ms", "0",
            "--repeat", "1", "--out", str(out)]
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), *args], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    for section in SECTIONS:
        assert section in report, f"{section} missing from the report"
    verification = report[report.index("## Verification cost"):report.index("## Targets")]
    rows = re.findall(r"^\| [\d,]+ \| (SQLite|PostgreSQL) \| (\d+) \| \d+ \| (\d+) \| \d+ \| (\w+) \|$", verification, re.M)
    assert len(rows) == 4, verification  # 2 partitions x 2 stores
    assert all((count, check, passed) == ("1", "1", "yes") for _, count, check, passed in rows), rows
