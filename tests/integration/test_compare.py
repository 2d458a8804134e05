"""The regression gate for real: scripts/ci-bench on host and ns, A/B and A/A, pyperf's
verdict on the same files, and `bench calibrate`.

The slower scenario has the same name, backends and variants as the base, so its cells
are the same cells; only `workload.argv` differs (`sh -c 'sleep 0.02; true'` against
`sh -c 'true'`), which the comparison lists as a note. Timing figures are never asserted:
only verdicts, whose noise band is measured from the runs themselves.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import backend_or_skip

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def checkout(tmp: Path, name: str, argv: str) -> Path:
    """A directory that `scripts/ci-bench` treats as a checkout: its own scenarios/ (the
    startup scenario with another workload) and this venv (code shared: --shared-venv)."""
    d = tmp / name
    (d / "scenarios").mkdir(parents=True)
    text = (REPO / "scenarios" / "startup.toml").read_text()
    text, n = re.subn(r"(?m)^argv = .*$", f"argv = {argv}", text)
    assert n == 1
    (d / "scenarios" / "startup.toml").write_text(text)
    (d / ".venv").symlink_to(VENV)
    return d


def ci_bench(tmp: Path, base: Path, new: Path, out: Path, runs: int = 3) -> int:
    # Output to a file, not a pipe: a stray child that inherited the pipe would keep a
    # capture waiting for EOF long after ci-bench has finished.
    with open(tmp / f"{out.name}.log", "w") as log:
        return subprocess.run(
            [str(REPO / "scripts" / "ci-bench"), "--base-dir", str(base), "--new-dir",
             str(new), "--shared-venv", "--runs", str(runs), "--max-samples", "20",
             "--backends", "host,ns", "--out", str(out)],
            stdout=log, stderr=subprocess.STDOUT, timeout=900, check=False).returncode


def pyperf_directions(tmp: Path, out: Path) -> dict[str, str]:
    """`python -m pyperf compare_to` on each side's pyperf files (merged with `pyperf
    convert --add`): benchmark name -> 'slower' | 'faster'."""
    merged = {}
    for side in ("base", "new"):
        files = sorted((out / side).glob("*.pyperf.json"))
        m = tmp / f"{side}-merged.json"
        m.write_bytes(files[0].read_bytes())
        for f in files[1:]:
            subprocess.run([sys.executable, "-m", "pyperf", "convert", str(m), "--add", str(f),
                            "-o", str(m) + ".tmp"], check=True, capture_output=True)
            Path(str(m) + ".tmp").replace(m)
        merged[side] = m
    p = subprocess.run([sys.executable, "-m", "pyperf", "compare_to", str(merged["base"]),
                        str(merged["new"])], capture_output=True, text=True, check=False)
    found: dict[str, str] = {}
    name = None
    for line in p.stdout.splitlines():
        # either "NAME: Mean +- std dev: ... 1.49x slower" or a "NAME" header over "===="
        # and "Mean +- std dev: ..." (pyperf picks the layout)
        head, sep, _ = line.partition(": Mean +- std dev")
        if sep:
            name = head.strip()
        elif line and not line.startswith(("=", " ", "Mean", "ERROR", "Benchmark")):
            name = line.strip()
        m = re.search(r"([\d.]+)x (slower|faster)$", line)
        if m and name:
            found[name] = m.group(2)
    assert found, p.stdout + p.stderr
    return found


def test_a_slower_workload_is_a_regression_and_pyperf_agrees(tmp_path: Path) -> None:
    backend_or_skip("ns")
    base = checkout(tmp_path, "base", '["sh", "-c", "true"]')
    slow = checkout(tmp_path, "slow", '["sh", "-c", "sleep 0.02; true"]')
    out = tmp_path / "ab"
    rc = ci_bench(tmp_path, base, slow, out)
    assert rc == 1, (tmp_path / "ab.log").read_text()[-3000:]
    report: dict[str, Any] = json.loads((out / "compare.json").read_text())
    regressed = {(c["backend"], c["metric"]) for c in report["cells"]
                 if c["verdict"] == "regression"}
    # the sleep is between the ready line and the exit: host's exit phase grows from
    # well under a millisecond to over 20 ms
    assert ("host", "startup.exit") in regressed, report["cells"]
    md = (out / "summary.md").read_text()
    exit_host = next(c for c in report["cells"]
                     if (c["backend"], c["metric"]) == ("host", "startup.exit"))
    assert f"{exit_host['ratio']:.3f} ({exit_host['lo']:.3f} – {exit_host['hi']:.3f})" in md
    assert "workload.argv differs" in md
    # pyperf reads the same samples (means, not medians): same direction wherever the
    # change is large
    directions = pyperf_directions(tmp_path, out)
    for c in report["cells"]:
        if c["verdict"] in ("regression", "improvement") and \
                (c["ratio"] >= 1.5 or c["ratio"] <= 1 / 1.5):
            name = f"{c['metric']} {c['backend']}"
            want = "slower" if c["ratio"] > 1 else "faster"
            assert directions.get(name) == want, (name, c, directions)


def test_aa_is_not_a_regression(tmp_path: Path) -> None:
    backend_or_skip("ns")
    base = checkout(tmp_path, "base", '["sh", "-c", "true"]')
    out = tmp_path / "aa"
    rc = ci_bench(tmp_path, base, base, out)
    report = json.loads((out / "compare.json").read_text())
    assert rc == 0, [c for c in report["cells"] if c["verdict"] == "regression"]
    assert all(c["band_source"] == "observed" for c in report["cells"])


def test_calibrate_stores_the_noise_band_and_refuses_to_redo_it(tmp_path: Path) -> None:
    backend_or_skip("host")
    bl = tmp_path / "bl"
    args = [sys.executable, "-m", "harness.cli", "calibrate", "startup", "--backends", "host",
            "--runs", "3", "--over", "0", "--baselines", str(bl), "--out", str(tmp_path / "cal")]
    with open(tmp_path / "cal.log", "w") as log:
        p = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, timeout=600,
                           check=False, cwd=REPO)
    assert p.returncode == 0, (tmp_path / "cal.log").read_text()[-2000:]
    (target,) = bl.glob("*/startup.json")
    doc = json.loads(target.read_text())
    noise = {r["metric"]: r for r in doc["baseline"]["noise"]}
    assert "startup.total" in noise and noise["startup.total"]["runs"] == 3
    assert {s.get("copy") for s in doc["samples"]} == {0, 1}
    assert len(list((tmp_path / "cal").glob("*.pyperf.json"))) == 3
    p2 = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False,
                        cwd=REPO)
    assert p2.returncode == 2 and "--force" in p2.stderr
    # compare picks the calibrated band up from the baselines directory
    runs = sorted(f for f in (tmp_path / "cal").glob("*.json")
                  if not f.name.endswith(".pyperf.json"))
    p3 = subprocess.run([sys.executable, "-m", "harness.cli", "compare", str(runs[0]),
                         str(runs[1]), "--baselines", str(bl), "--json",
                         str(tmp_path / "c.json")], capture_output=True, text=True,
                        timeout=300, check=False, cwd=REPO)
    assert p3.returncode in (0, 1), p3.stderr
    cells = json.loads((tmp_path / "c.json").read_text())["cells"]
    assert all(c["band_source"] == "calibrated" for c in cells)
