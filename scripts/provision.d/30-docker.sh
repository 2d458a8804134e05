# Docker: dockerd (Debian's docker.io) with crun, runsc and cvbench-ns (27-cvbench-ns.sh)
# registered as extra runtimes.
#
# The scripts call /usr/bin/docker, Debian's CLI from the same docker.io release as the
# daemon, never a `docker` found first on PATH (e.g. a newer /usr/local/bin/docker): the
# CLI and daemon then speak the same API version and the readiness check cannot be broken
# by an unrelated client.
#
# Runtimes go into /etc/docker/daemon.json, merged into a file that exists (only missing
# keys are added; the original is kept once as daemon.json.cvbench-orig); a running dockerd
# reloads "runtimes" on SIGHUP, so nothing is restarted. runsc runs with `--network=none`
# (its own netstack cannot be set up in this VM) and the ptrace platform (no KVM here).
DOCKER_CLI=/usr/bin/docker
DOCKER_SOCK=/run/docker.sock
DOCKER_CONF=/etc/docker/daemon.json
mkdir -p /etc/docker /run/cvbench

changed=$(python3 - "$DOCKER_CONF" <<'EOF'
import json, os, shutil, sys
path = sys.argv[1]
want = {
    "crun": {"path": "/usr/bin/crun"},
    "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--platform=ptrace"]},
    "cvbench-ns": {"path": "/usr/local/bin/cvbench-ns"},
}
conf = {}
if os.path.exists(path):
    with open(path) as f:
        conf = json.load(f)
runtimes = conf.setdefault("runtimes", {})
added = [name for name in want if name not in runtimes]
for name in added:
    runtimes[name] = want[name]
if added:
    if os.path.exists(path) and not os.path.exists(path + ".cvbench-orig"):
        shutil.copy2(path, path + ".cvbench-orig")
    with open(path + ".tmp", "w") as f:
        json.dump(conf, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
print(" ".join(added))
EOF
)
if [ -n "$changed" ]; then
  say "dockerd: registered runtime(s) $changed in $DOCKER_CONF"
else
  say "dockerd: runtimes crun, runsc and cvbench-ns already in $DOCKER_CONF"
fi

docker_ready="$DOCKER_CLI -H unix://$DOCKER_SOCK version"
if eval "$docker_ready" >/dev/null 2>&1; then
  say "dockerd: already running"
  if [ -n "$changed" ]; then
    # runtimes are among the options dockerd reloads on SIGHUP
    if [ -f /run/docker.pid ] && kill -HUP "$(cat /run/docker.pid)" 2>/dev/null; then
      say "dockerd: reloaded its configuration (SIGHUP)"
    elif pid1_is_systemd; then
      systemctl reload docker && say "dockerd: reloaded its configuration (systemctl)"
    fi
  fi
elif pid1_is_systemd; then
  systemctl enable --now docker.service
  say "dockerd: started by systemd"
else
  # After a kill, the pid files of dockerd and of its containerd may name an unrelated
  # process by now, or a zombie a slow PID 1 has not reaped yet. dockerd would refuse to
  # start, or wait for that "containerd" to answer and time out: drop such pid files.
  if [ -f /run/docker.pid ] && ! pid_runs /run/docker.pid /usr/sbin/dockerd; then
    rm -f /run/docker.pid
  fi
  ctrd_pid=/run/docker/containerd/containerd.pid
  if [ -f "$ctrd_pid" ] && ! pid_runs "$ctrd_pid" containerd; then
    rm -f "$ctrd_pid"
  fi
  # dockerd starts and supervises its own containerd (under /run/docker/containerd). It
  # runs from / (a subshell's cd): a daemon must not keep a work tree as its cwd.
  ( cd / && start_daemon dockerd /run/cvbench/dockerd.pid "$docker_ready" \
    /usr/sbin/dockerd --host="unix://$DOCKER_SOCK" --pidfile=/run/docker.pid \
    --config-file="$DOCKER_CONF" )
fi
for rt in crun runsc cvbench-ns; do
  if $DOCKER_CLI -H "unix://$DOCKER_SOCK" info --format '{{json .Runtimes}}' | grep -q "\"$rt\""; then
    say "dockerd: runtime $rt registered"
  else
    say "dockerd: runtime $rt NOT registered (restart dockerd to load $DOCKER_CONF)"
  fi
done
