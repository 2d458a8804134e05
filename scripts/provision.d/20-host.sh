# Host fixes every backend relies on.
. "$here/provision.d/lib.sh"
# crun refuses a hybrid cgroup host unless hugetlb is mounted as a v1 controller.
if [ ! -e /sys/fs/cgroup/cgroup.controllers ] && [ -d /sys/fs/cgroup/memory ]; then
  if ! grep -q ' /sys/fs/cgroup/hugetlb cgroup ' /proc/mounts; then
    mkdir -p /sys/fs/cgroup/hugetlb
    mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
    say "mounted the hugetlb cgroup v1 controller (crun needs it on hybrid hosts)"
  else
    say "hugetlb cgroup controller: mounted"
  fi
fi
modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems && say "overlayfs: available" || say "overlayfs: MISSING"
# Debian's haproxy package enables its own service (an empty configuration, running for
# nothing on a benchmark host); the scale study runs HAProxy itself, per run
if pid1_is_systemd && systemctl is-enabled --quiet haproxy.service 2>/dev/null; then
  systemctl disable --now haproxy.service >/dev/null 2>&1 &&
    say "haproxy.service: disabled (the scale study starts its own HAProxy)"
fi
