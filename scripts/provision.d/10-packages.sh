# Debian packages: the ones missing are installed, in one apt-get call.
. "$here/provision.d/lib.sh"
packages=(
  # the harness itself (gcc and libc6-dev, static glibc: ns:pool builds its slot waiter,
  # runtimes/ns/slot_waiter.c, with gcc -static)
  python3 python3-venv python3-dev gcc make git libc6-dev
  # tests: readelf (whether an ELF binary is static); bpftool (what the kernel says is
  # attached to a cgroup: ns's eBPF device program on cgroup v2); strace (counting a
  # probe's system calls); libc6-dev too, for the probes built with gcc -static
  binutils bpftool strace
  # the workload image: busybox-static, and tools copied into images with their libraries
  busybox-static fio iperf3 sockperf hyperfine
  # real images: Debian root filesystems (debootstrap); host-side HTTP checks in tests (curl)
  debootstrap curl
  # application studies' load generators, run on the host (wrk, redis-benchmark, pgbench;
  # sysbench runs inside the images, from their own package, and here for `bench doctor`)
  wrk redis-tools postgresql-client sysbench
  # the scale study's front over single instances (run by the study, not as a service)
  haproxy
  # the overlay study's worker-side steps (ssh to the second docker daemon)
  openssh-client
  # ns runtime
  iproute2 iptables kmod util-linux libseccomp2
  # OCI runtimes (oci:* backends, and the engines' extra runtimes)
  runc crun runsc
  # the OCI conformance suite (scripts/oci-conformance): Go and runtime-tools' library
  # with its -dev dependencies, which the validation tests build against (GOPATH mode);
  # google/uuid is the one the tests import that runtime-tools' package does not pull in
  golang-go golang-github-opencontainers-runtime-tools-dev golang-github-google-uuid-dev
  # Docker and Podman
  docker.io containerd podman uidmap slirp4netns containernetworking-plugins netavark
  fuse-overlayfs catatonit
  # netavark's firewall: Debian 13's netavark drives nft (a bridge network fails with
  # "unable to execute nft" without it); Debian 12's uses iptables
  nftables
  # libvirt/QEMU VMs and the guest kernel; libvirt-dev + pkg-config build libvirt-python
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
  linux-image-amd64 e2fsprogs cpio zstd
)
apt_ensure apt "${packages[@]}"
# Debian 13's docker.io leaves its CLI to docker-cli (which it only recommends, and
# recommends are not installed); Debian 12's docker.io has the CLI built in.
if [ ! -x /usr/bin/docker ]; then
  apt_ensure apt-docker-cli docker-cli
fi
