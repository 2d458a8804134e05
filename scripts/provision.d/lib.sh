# Helpers for the provision parts (sourced, not run).
say() { printf '   %s\n' "$*"; }
pid1_is_systemd() { [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; }
# start_daemon NAME PIDFILE READY_CMD CMD...: start CMD in the background unless the pid
# file names a live process; wait (up to 60 s) until READY_CMD succeeds.
start_daemon() {
  local name=$1 pidfile=$2 ready=$3; shift 3
  if eval "$ready" >/dev/null 2>&1; then say "$name: already running"; return 0; fi
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    say "$name: running (pid $(cat "$pidfile")), waiting until it answers"
  else
    say "$name: starting (log $CVBENCH_PROVISION_LOG/$name.log)"
    setsid "$@" >>"$CVBENCH_PROVISION_LOG/$name.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
  fi
  for _ in $(seq 1 120); do
    if eval "$ready" >/dev/null 2>&1; then say "$name: ready"; return 0; fi
    sleep 0.5
  done
  echo "provision: $name did not become ready; last lines of its log:" >&2
  tail -n 20 "$CVBENCH_PROVISION_LOG/$name.log" >&2 || true
  return 1
}
