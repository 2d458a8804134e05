# Host set-up for container runtimes' start path (ns, and equally runc, crun, Docker, Podman).
. "$here/provision.d/lib.sh"
# Moving a task into a cgroup takes cgroup_threadgroup_rwsem for writing; in its default
# (per-cpu) mode that waits for an RCU grace period, several milliseconds on a busy host,
# once per container start. The cgroup2 mount option favordynmods (Linux 6.0+; what
# CONFIG_CGROUP_FAVOR_DYNMODS sets at boot) keeps the lock in its other mode: migrations
# no longer wait, forks and exits pay an atomic operation more. The lock is global, so the
# option on the hybrid host's cgroup2 mount serves the v1 hierarchies too.
for m in /sys/fs/cgroup /sys/fs/cgroup/unified; do
  if grep -q " $m cgroup2 " /proc/mounts; then
    if grep " $m cgroup2 " /proc/mounts | grep -q favordynmods; then
      say "cgroup2 at $m: favordynmods already set"
    elif mount -o remount,favordynmods "$m" 2>/dev/null; then
      say "cgroup2 at $m: remounted with favordynmods (cgroup migrations without an RCU wait)"
    else
      say "cgroup2 at $m: favordynmods not supported by this kernel (container starts pay an RCU wait)"
    fi
  fi
done
