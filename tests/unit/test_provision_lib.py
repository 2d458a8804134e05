"""scripts/provision.d/lib.sh: what counts as a running daemon after a machine's processes
were all killed (stale pid files, reused pids, sockets left behind)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "scripts" / "provision.d" / "lib.sh"


def _bash(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f'. "{LIB}"; {script}'], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                               "CVBENCH_PROVISION_LOG": str(tmp_path)})


def test_pid_runs_requires_the_daemons_own_executable(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pidfile = tmp_path / "d.pid"
        pidfile.write_text(f"{sleeper.pid}\n")
        # the pid is alive and runs sleep: that is the daemon only if we expect sleep
        assert _bash(f'pid_runs "{pidfile}" sleep', tmp_path).returncode == 0
        # a reused pid (an unrelated live process) is not the daemon
        assert _bash(f'pid_runs "{pidfile}" /usr/sbin/dockerd', tmp_path).returncode != 0
    finally:
        sleeper.kill()
        sleeper.wait()
    # a dead pid, an empty file and a missing file are not running daemons
    assert _bash(f'pid_runs "{pidfile}" sleep', tmp_path).returncode != 0
    (tmp_path / "empty.pid").write_text("")
    assert _bash(f'pid_runs "{tmp_path / "empty.pid"}" sleep', tmp_path).returncode != 0
    assert _bash(f'pid_runs "{tmp_path / "none.pid"}" sleep', tmp_path).returncode != 0


def test_start_daemon_replaces_a_stale_pid_file(tmp_path: Path) -> None:
    # The pid file names an unrelated live process (as after a kill and pid reuse) and the
    # "daemon" is not ready: start_daemon must start it rather than wait on the stranger.
    stranger = subprocess.Popen(["sleep", "60"])
    pidfile, ready = tmp_path / "x.pid", tmp_path / "ready"
    pidfile.write_text(f"{stranger.pid}\n")
    try:
        p = _bash(f'start_daemon fake "{pidfile}" "test -e {ready}" '
                  f'{sys.executable} -c "import pathlib, time; '
                  f"pathlib.Path('{ready}').touch(); time.sleep(60)\"", tmp_path)
        assert p.returncode == 0, p.stderr
        assert "fake: starting" in p.stdout and "fake: ready" in p.stdout
        new = int(pidfile.read_text())
        assert new != stranger.pid
        subprocess.run(["kill", str(new)], check=False)
    finally:
        stranger.kill()
        stranger.wait()


def test_write_unit_reports_a_change_only(tmp_path: Path) -> None:
    """write_unit (the systemd path's units and drop-ins): true when it wrote, so the
    caller reloads systemd and restarts a service only then."""
    unit = tmp_path / "d" / "x.service.d" / "50-cvbench.conf"
    write = f'write_unit "{unit}" "$(printf "%s\\n" "[Service]" "ExecStart=/bin/true")"'
    assert _bash(write, tmp_path).returncode == 0
    assert unit.read_text() == "[Service]\nExecStart=/bin/true\n"
    assert _bash(write, tmp_path).returncode == 1
    unit.write_text("[Service]\nExecStart=/bin/false\n")
    assert _bash(write, tmp_path).returncode == 0
    assert unit.read_text() == "[Service]\nExecStart=/bin/true\n"
