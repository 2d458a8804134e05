"""Failures are data, end to end: a real run in which one backend fails one sample in
three shows "n ok / n tried" in `bench run`'s table, in report.md and in claims.csv, and
the claim drawn from the failing cell is "inconclusive: failures" and says why.

The failure is injected by the workload itself: it counts its runs in a file under the
host's /dev/shm and exits 1 on every third. Only the `host` backend shares the host's
/dev (its chroot has it bind-mounted, runtimes/host.py); `ns` gives every instance its
own minimal /dev, where the count starts again at 1 each time, so it never fails. `ns`
is there because a claim needs two kinds (a container against the bare process).
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest

from harness import results
from harness.report import claims
from tests.conftest import backend_or_skip
from tests.integration.test_studies_run import BENCH, run_once

pytestmark = [pytest.mark.root]

SAMPLES = 6
# host: runs 3 and 6 fail, so its 6th good sample is its 8th run.
HOST_COUNTS = f"{SAMPLES} ok / 8 tried"
REASON = "startup: the workload exited with 1"


def test_failed_samples_are_counted_shown_and_make_the_claim_inconclusive(
        tmp_path: Path) -> None:
    for b in ("host", "ns"):
        backend_or_skip(b)
    counter = Path("/dev/shm") / f"cvbench-test-failures-{uuid.uuid4().hex[:8]}"
    script = (f"n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); "
              f"echo $n > {counter} 2>/dev/null; [ $((n % 3)) -ne 0 ]")
    data = {"name": "failing-startup", "study": "startup", "backends": ["host", "ns"],
            "network": "none",
            "workload": {"image": {"recipe": "base"}, "argv": ["sh", "-c", script],
                         "readiness": "marker"},
            "sampling": {"warmups": 0, "min_samples": SAMPLES, "max_samples": SAMPLES,
                         "target_ci": 0.05, "time_budget": 600, "timeout": 60,
                         "metric": "startup.total"}}
    try:
        # a wide terminal: the table's columns are never cut
        p, doc = run_once(data, tmp_path, samples=SAMPLES, env={"COLUMNS": "200"})
    finally:
        counter.unlink(missing_ok=True)
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"

    # The result: every cell's attempts, failures and reasons.
    cells = {c["backend"]: c for c in doc["cells"]}
    assert {k: cells["host"][k] for k in ("samples", "failures", "attempts")} == {
        "samples": SAMPLES, "failures": 2, "attempts": 8}
    ((reason, n),) = cells["host"]["reasons"].items()
    assert n == 2 and reason.startswith(REASON)
    assert (cells["ns"]["failures"], cells["ns"]["attempts"]) == (0, SAMPLES)
    failed = [e for e in doc["events"] if e["kind"] == "sample_failed"]
    assert [e["backend"] for e in failed] == ["host", "host"]

    # bench run's table, and the reasons under it
    table = [line for line in p.stdout.splitlines() if line.lstrip().startswith("host")]
    assert table and all(HOST_COUNTS in line for line in table), p.stdout
    assert not any("tried" in line for line in p.stdout.splitlines()
                   if line.lstrip().startswith("ns"))
    assert f"{HOST_COUNTS}; failed: 2× {REASON}" in " ".join(p.stderr.split())

    # the report
    result = next(f for f in (tmp_path / "D").glob("*.json")
                  if not f.name.endswith(".pyperf.json"))
    report = tmp_path / "R"
    r = subprocess.run([*BENCH, "report", str(result), "--out", str(report), "--format",
                        "png"], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    md = (report / "report.md").read_text()
    assert f"cell host: {HOST_COUNTS}" in md and f"host ({HOST_COUNTS})" in md
    csv = pd.read_csv(report / "claims.csv")
    row = csv[(csv["claim"] == "start-overhead") & (csv["metric"] == "startup.to_ready")
              ].iloc[0]
    assert (row["a"], row["b"]) == ("ns", f"host ({HOST_COUNTS})")
    assert row["verdict"] == claims.INCONCLUSIVE_FAILURES
    assert row["note"].startswith(f"host: {HOST_COUNTS} (25% failed; most common: {REASON}")
    assert (row["ok_b"], row["tried_b"]) == (SAMPLES, 8)
    assert results.load_result(result).attempts()  # the file reads back with its counts

