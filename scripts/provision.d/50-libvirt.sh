# libvirt + QEMU for the `libvirt` backend (packages come from 10-packages.sh).
. "$here/provision.d/lib.sh"

# libvirt's NAT networks (network = "bridge" for VMs) hand out addresses with dnsmasq,
# which Debian only recommends (10-packages installs without recommends).
if ! dpkg-query -W -f='${Status}' dnsmasq-base 2>/dev/null | grep -q "ok installed"; then
  apt-get install -y -qq --no-install-recommends dnsmasq-base >>"$CVBENCH_PROVISION_LOG/apt.log" 2>&1
  say "libvirt: installed dnsmasq-base (DHCP on libvirt networks)"
fi

qemu_conf=/etc/libvirt/qemu.conf
# set_conf FILE KEY VALUE: make `KEY = VALUE` the one uncommented setting of KEY in FILE.
set_conf() {
  local file=$1 key=$2 value=$3
  if grep -qxF "$key = $value" "$file" && [ "$(grep -c "^[[:space:]]*$key[[:space:]]*=" "$file")" = 1 ]; then
    return 1  # already so
  fi
  sed -i "/^[[:space:]]*$key[[:space:]]*=/d" "$file"
  printf '%s = %s\n' "$key" "$value" >>"$file"
}

libvirt_changed=0
if [ -f "$qemu_conf" ]; then
  # No usable LSM here (no AppArmor, no SELinux mounted): libvirt would refuse to start
  # domains while it tries to load a profile for them.
  if [ -d /sys/kernel/security/apparmor ] || [ -e /sys/fs/selinux/enforce ]; then
    say "libvirt: a security module is active; security_driver left as configured"
  elif set_conf "$qemu_conf" security_driver '"none"'; then
    say "libvirt: security_driver = \"none\" (no AppArmor/SELinux usable on this host)"
    libvirt_changed=1
  fi
  # cvbench runs as root and keeps guest kernels, initramfs and disks in its cache under
  # root's home (mode 0700): QEMU must run as root to open them. This only changes the
  # uid of the qemu process, not what it measures.
  for kv in 'user "root"' 'group "root"'; do
    # shellcheck disable=SC2086
    if set_conf "$qemu_conf" $kv; then
      say "libvirt: qemu.conf $kv (QEMU opens files in root's cvbench cache)"
      libvirt_changed=1
    fi
  done
  [ "$libvirt_changed" = 0 ] && say "libvirt: qemu.conf already set"
fi

if pid1_is_systemd; then
  if [ "$libvirt_changed" = 1 ] && systemctl is-active --quiet libvirtd; then
    systemctl restart libvirtd && say "libvirtd: restarted (systemd) for the new qemu.conf"
  else
    systemctl start virtlogd.socket libvirtd.socket libvirtd 2>/dev/null \
      && say "libvirtd: running (systemd)"
  fi
else
  # PID 1 is not systemd: start the daemons by hand, with pid files.
  # libvirt daemonizes QEMU (its parent becomes PID 1) and, when a guest powers off,
  # waits until QEMU's pid is gone before it reports the domain shut off. A PID 1 that
  # reaps orphans late (as this machine's does, ~1.5 s) would add that delay to every
  # VM's exit; catatonit as a child subreaper reaps them at once, as a normal init does.
  wrapper=()
  command -v catatonit >/dev/null && wrapper=(catatonit --)
  if pid_runs /run/libvirtd.pid /usr/sbin/libvirtd \
     && [ ${#wrapper[@]} -gt 0 ] \
     && [ "$(cat "/proc/$(awk '{print $4}' "/proc/$(cat /run/libvirtd.pid)/stat")/comm")" != catatonit ]; then
    say "libvirtd: not under a reaping subreaper; restarting it under catatonit"
    libvirt_changed=1
  fi
  if [ "$libvirt_changed" = 1 ] && pid_runs /run/libvirtd.pid /usr/sbin/libvirtd; then
    old=$(cat /run/libvirtd.pid)
    kill "$old"
    # libvirtd removes its pid file early on the way out: wait on the pid itself.
    for _ in $(seq 1 80); do kill -0 "$old" 2>/dev/null || break; sleep 0.25; done
    rm -f /run/libvirtd.pid
    say "libvirtd: stopped to reload qemu.conf"
  fi
  mkdir -p /run/libvirt
  # virtlogd collects each QEMU's stdout/stderr (the domain log) for libvirtd. Ready means
  # it answers: a socket file alone proves nothing, since a killed virtlogd leaves its
  # sockets behind (and libvirtd then fails every domain start with "Connection refused").
  start_daemon virtlogd /run/virtlogd.pid "virt-admin -c virtlogd:///system version" \
    /usr/sbin/virtlogd
  # The wrapper's pid file is ours; libvirtd writes its own /run/libvirtd.pid.
  start_daemon libvirtd /run/cvbench-libvirtd.pid "virsh -c qemu:///system version" \
    "${wrapper[@]}" /usr/sbin/libvirtd
fi
virsh -c qemu:///system version 2>/dev/null | sed -n 's/^/   /p' | head -3
if [ -e /dev/kvm ]; then
  say "/dev/kvm present: the backend probes whether KVM really works (else TCG, flagged)"
else
  say "/dev/kvm absent: guests run under TCG (emulated), flagged in every result"
fi
