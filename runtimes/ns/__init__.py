"""`ns`: the project's own namespace/cgroup container runtime.

Laid out like runc's libcontainer: config.py (pure data) · validate.py (checks before
acting) · namespaces.py (system calls) · rootfs.py (overlay, pivot_root, /proc, /dev) ·
cgroups/ (Manager protocol, v1.py, v2.py, new() picks by host) · process.py (the child's
set-up, sync over pipes) · forkserver.py (where children are cloned from) · network.py
(loopback, bridge) · security.py (keyring, rlimits, capabilities, no_new_privs,
descriptors, seccomp: applied last) · seccomp.py (Docker's profile, compiled once per
runner, and cvbench-ns's cache of compiled programs; never imported by the child).

Mapping of the InstanceSpec:
  argv/env/workdir/hostname  -> execve of /bench/init in the new root, as given
  limits                     -> the instance's cgroup (see cgroups/v1.py and v2.py);
                                rootless on a host without a delegated cgroup v2: none
                                (recorded in the metadata, as podman does)
  limits.rlimits             -> setrlimit in the child, over ns's defaults (the runner's)
  network none | bridge | host -> a private netns with loopback up | the same plus a veth
                                into the cvbench0 bridge (network.py) | the host's netns
  network macvlan | ipvlan    -> a private netns with an eth0 of that driver (mode bridge
                                | l2) on the run's own parent link, an address of its
                                /24 and a default route through the host's shim
                                (runtimes/_vlan.py)
  mounts bind | volume | tmpfs -> recursive bind mount (read-only: every submount too,
                                by mount_setattr; without it, top mount only and not
                                recursive) | bind of <state>/ns/volumes/cvbench-<run
                                id>-<name>, kept across the run's instances | tmpfs
                                nosuid,nodev,noexec with size
  readiness                  -> the ready line read from the stdout pipe
  writable layer             -> overlay upper/work on disk under <state>/ns/<instance>,
                                where Docker's overlay2 keeps it (made at create, removed
                                at remove; fsync honoured); ns:tmpfs: in a tmpfs private
                                to the instance (in RAM, charged to the instance's memory
                                cgroup, as runsc's default memory-backed overlay; mounted
                                `volatile`). The result records which (`writable_layer`)
  user                       -> root inside; as a non-root user, a user namespace maps
                                the user to root (rootless)

Phases: create = the instance dir (upper, work; not for ns:tmpfs), the request to the
fork server, which clones the child, then the cgroup (with its device allow-list: on v2
an eBPF program, cgroups/devices_bpf.py), made while the child sets itself up;
ns:intocgroup (cgroup v2): the cgroup first, and the child cloned into it (clone3 with
CLONE_INTO_CGROUP). start = release the child (it joins the cgroup unless cloned into
it, drops privileges, execs) and wait until the exec has happened (or a step failed).
remove = kill what is left, rmdir the cgroup and the instance dir. exec (a healthcheck)
= a helper from the fork server joins the instance's namespaces, and its child the
cgroup, root and workdir, then applies the same protections as the first process
(process.exec_main).
"""
