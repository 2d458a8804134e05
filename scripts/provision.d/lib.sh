# Helpers for the provision parts (sourced, not run).
say() { printf '   %s\n' "$*"; }
# pid_runs PIDFILE EXE: the pid file names a live process running EXE (a path or a name
# on PATH). A daemon that was killed leaves its pid file behind, and its pid may since
# have gone to an unrelated process: that one must not be taken for the daemon.
pid_runs() {
  local pid exe
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  exe=$(command -v "$2") || return 1
  [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$exe")" ]
}
pid1_is_systemd() { [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; }
# write_unit FILE TEXT: make FILE hold TEXT (a systemd unit or drop-in); true if it changed
# (the caller runs `systemctl daemon-reload`).
write_unit() {
  [ "$(cat "$1" 2>/dev/null)" = "$2" ] && return 1
  mkdir -p "$(dirname "$1")"
  printf '%s\n' "$2" > "$1"
}
# start_daemon NAME PIDFILE READY_CMD CMD...: start CMD in the background unless the pid
# file names a live process; wait (up to 60 s) until READY_CMD succeeds.
start_daemon() {
  local name=$1 pidfile=$2 ready=$3; shift 3
  if eval "$ready" >/dev/null 2>&1; then say "$name: already running"; return 0; fi
  if pid_runs "$pidfile" "$1"; then
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
# apt_ensure LOG PKG...: install the packages not installed yet, in one apt-get call (its
# output in $CVBENCH_PROVISION_LOG/LOG.log); `apt_installed` lists what it installed.
apt_ensure() {
  local log=$1 p; shift
  apt_installed=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || apt_installed+=("$p")
  done
  if [ ${#apt_installed[@]} -eq 0 ]; then
    say "$log: all $# packages installed"
    return 0
  fi
  say "$log: installing ${apt_installed[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_installed[@]}" \
    >"$CVBENCH_PROVISION_LOG/$log.log" 2>&1 \
    || { tail -n 30 "$CVBENCH_PROVISION_LOG/$log.log" >&2; exit 1; }
  say "$log: installed ${#apt_installed[@]} package(s)"
}
