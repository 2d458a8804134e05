# Podman: its default ulimits fixed for this host, and its REST service on a unix socket.
#
# Rootful Podman asks for nofile=1048576 by default; a host whose root lacks
# CAP_SYS_RESOURCE (containers, some VMs) cannot raise a hard limit, so every container
# fails with "setrlimit RLIMIT_NOFILE: Operation not permitted". The fix lives in a
# drop-in the harness owns, /etc/containers/containers.conf.d/50-cvbench.conf (Podman 4.3,
# containers-common 0.50, reads containers.conf.d after containers.conf; checked with
# `podman run … sh -c 'ulimit -n'`), so a user's /etc/containers/containers.conf is never
# touched. The limits written are this host's hard limits (nproc capped at 32768).
PODMAN_SOCK=/run/podman/podman.sock
PODMAN_DROPIN=/etc/containers/containers.conf.d/50-cvbench.conf
mkdir -p /run/podman /run/cvbench /etc/containers/containers.conf.d

# (12-stacks.sh sets it when it installed aardvark-dns: a service that started without
# it gives user-defined networks no DNS)
podman_conf_changed=${podman_restart_wanted:-}
cap_eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
if (( (16#$cap_eff >> 24) & 1 )); then
  say "podman: root has CAP_SYS_RESOURCE, Podman's default ulimits work as they are"
else
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
  nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  want=$(printf '%s\n%s\n%s\n' "# Written by cvbench scripts/provision.d/40-podman.sh: root lacks CAP_SYS_RESOURCE here." \
    "[containers]" "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]")
  if [ "$(cat "$PODMAN_DROPIN" 2>/dev/null)" != "$want" ]; then
    printf '%s\n' "$want" > "$PODMAN_DROPIN"
    podman_conf_changed=1
    say "podman: wrote $PODMAN_DROPIN (default_ulimits nofile=$nofile, nproc=$nproc)"
  else
    say "podman: $PODMAN_DROPIN up to date (nofile=$nofile, nproc=$nproc)"
  fi
fi

# cvbench-ns (27-cvbench-ns.sh) as a runtime Podman knows by name (`podman --runtime
# cvbench-ns`): [engine.runtimes] in a drop-in of its own.
NS_DROPIN=/etc/containers/containers.conf.d/51-cvbench-ns.conf
want=$(printf '%s\n' "# Written by cvbench scripts/provision.d/40-podman.sh: cvbench-ns as an OCI runtime" \
  "[engine.runtimes]" 'cvbench-ns = ["/usr/local/bin/cvbench-ns"]')
if [ "$(cat "$NS_DROPIN" 2>/dev/null)" != "$want" ]; then
  printf '%s\n' "$want" > "$NS_DROPIN"
  podman_conf_changed=1
  say "podman: wrote $NS_DROPIN (runtime cvbench-ns)"
else
  say "podman: $NS_DROPIN up to date"
fi

# start_podman_service NAME SOCKET [GLOBAL OPTIONS]: one `podman system service` with a pid
# file; restarted when the ulimits drop-in changed (a service reads containers.conf once).
start_podman_service() {
  local name=$1 sock=$2; shift 2
  local pidfile=/run/cvbench/$name.pid ready="podman --remote --url unix://$sock version"
  if [ -n "$podman_conf_changed" ] && pid_runs "$pidfile" podman; then
    say "$name: restarting it to load the new defaults"
    kill "$(cat "$pidfile")"
    for _ in $(seq 1 40); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.25; done
    rm -f "$pidfile" "$sock"
  fi
  if eval "$ready" >/dev/null 2>&1; then
    say "$name: already running on $sock"
    [ -n "$podman_conf_changed" ] && [ ! -f "$pidfile" ] \
      && say "$name: not started by cvbench; restart it to load $PODMAN_DROPIN"
    return 0
  fi
  # --time=0: never exit when idle (a benchmark must not pay the service's start-up). It
  # runs from /run/cvbench: conmon inherits the cwd, and Podman 4.3's conmon writes an
  # empty "oom" marker there after every OOM kill (into a work tree, or /, otherwise).
  ( cd /run/cvbench && start_daemon "$name" "$pidfile" "$ready" \
    /usr/bin/podman "$@" system service --time=0 "unix://$sock" )
}

# Podman 4.3's API cannot choose the OCI runtime per container (the compat create ignores
# HostConfig.Runtime, libpod's create its oci_runtime), so `podman:runc` and `podman:ns`
# have services of their own whose default runtime is runc, cvbench-ns.
if pid1_is_systemd; then
  # Both services are systemd units. podman.socket's podman.service would exit after 5 s
  # idle (`podman system service`'s default): a drop-in gives it --time=0, as above.
  # The runc service is a unit of cvbench's own, a copy of podman.service's settings.
  unit_changed=
  write_unit /etc/systemd/system/podman.service.d/50-cvbench.conf "$(printf '%s\n' \
    "# Written by cvbench scripts/provision.d/40-podman.sh: never exit when idle" \
    "[Service]" "ExecStart=" 'ExecStart=/usr/bin/podman $LOGGING system service --time=0')" \
    && unit_changed=1
  write_unit /etc/systemd/system/cvbench-podman-runc.service "$(printf '%s\n' \
    "# Written by cvbench scripts/provision.d/40-podman.sh: the service of podman:runc" \
    "[Unit]" "Description=Podman API service with runc as its OCI runtime (cvbench)" \
    "[Service]" "Delegate=true" "Type=exec" "KillMode=process" \
    "ExecStartPre=/usr/bin/mkdir -p /run/podman" \
    "ExecStart=/usr/bin/podman --runtime runc system service --time=0 unix:///run/podman/podman-runc.sock" \
    "[Install]" "WantedBy=multi-user.target")" && unit_changed=1
  # --cgroup-manager cgroupfs: cvbench-ns makes its cgroups itself (it refuses the
  # --systemd-cgroup that Podman passes with its systemd manager)
  write_unit /etc/systemd/system/cvbench-podman-ns.service "$(printf '%s\n' \
    "# Written by cvbench scripts/provision.d/40-podman.sh: the service of podman:ns" \
    "[Unit]" "Description=Podman API service with cvbench-ns as its OCI runtime (cvbench)" \
    "[Service]" "Delegate=true" "Type=exec" "KillMode=process" \
    "ExecStartPre=/usr/bin/mkdir -p /run/podman" \
    "ExecStart=/usr/bin/podman --runtime cvbench-ns --cgroup-manager cgroupfs system service --time=0 unix:///run/podman/podman-ns.sock" \
    "[Install]" "WantedBy=multi-user.target")" && unit_changed=1
  if [ -n "$unit_changed" ]; then
    systemctl daemon-reload
    say "podman: systemd units written (podman.service --time=0, cvbench-podman-runc.service, cvbench-podman-ns.service)"
  fi
  systemctl enable --now podman.socket cvbench-podman-runc.service cvbench-podman-ns.service \
    2>&1 | sed 's/^/   /'
  if [ -n "$unit_changed$podman_conf_changed" ]; then
    # a running service keeps its command line and read containers.conf once
    systemctl try-restart podman.service cvbench-podman-runc.service cvbench-podman-ns.service
  fi
  for sock in "$PODMAN_SOCK" /run/podman/podman-runc.sock /run/podman/podman-ns.sock; do
    for _ in $(seq 1 120); do
      podman --remote --url "unix://$sock" version >/dev/null 2>&1 && break
      sleep 0.5
    done
    if podman --remote --url "unix://$sock" version >/dev/null 2>&1; then
      say "podman-service: answers on $sock (systemd)"
    else
      echo "provision: the Podman service on $sock did not answer; see journalctl -u podman.service -u cvbench-podman-runc.service -u cvbench-podman-ns.service" >&2
      exit 1
    fi
  done
else
  start_podman_service podman-service "$PODMAN_SOCK"
  start_podman_service podman-service-runc /run/podman/podman-runc.sock --runtime runc
  # cgroupfs: cvbench-ns makes its cgroups itself (it refuses --systemd-cgroup)
  start_podman_service podman-service-ns /run/podman/podman-ns.sock --runtime cvbench-ns --cgroup-manager cgroupfs
fi
