"""`ns`'s Runtime: the InstanceSpec mapped onto the modules of this package (see its
docstring for the mapping and the phases)."""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import platform
import re
import secrets
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import psutil

from harness.core import record
from harness.core.errors import BackendUnavailable, InstanceError, NotApplicable, UsageError
from harness.core.image import PATH_ENV, Image
from harness.core.probes import memory
from harness.core.probes.disk import du_bytes
from runtimes import _proc, _publish, _vlan
from runtimes._proc import PipedInstance
from runtimes.base import (
    NO_HOOKS,
    PREFIX,
    VLAN_MODES,
    Availability,
    Exit,
    Hooks,
    Instance,
    InstanceSpec,
    Leftover,
    Prepared,
    Stats,
    Traits,
    check_networks,
    own,
    remove_each,
    run_of,
    state_dir,
    uid_gid,
)
from runtimes.ns import cgroups, namespaces, network, process, rootfs, security, validate
from runtimes.ns import seccomp as seccomp_mod
from runtimes.ns.config import (
    BASE_FLAGS,
    DEVICE_RULES,
    DEVICES,
    MASKED_PATHS,
    READONLY_PATHS,
    RLIMITS,
    ContainerConfig,
    ExecConfig,
    MountPoint,
    caps,
)
from runtimes.ns.forkserver import ForkServer, ForkServerError
from runtimes.ns.shared import (
    cgroup_parents,
    empty_dirs,
    protection_lines,
    refuse_upper_env,
    runner_rlimits,
    with_rlimits,
    writable_layer,
)

SETUP_TIMEOUT = 30.0
_RRO = namespaces.has_mount_setattr()  # recursive read-only binds (Linux 5.12+)

_SERVER = ForkServer()  # one per runner process, shared by every NsRuntime
atexit.register(_SERVER.close)
DEV_LAYER = "devlayer.2"  # (.2: with dev/mqueue; gc removes the older "devlayer")
# Compiled once per runner process (not per instance), by profile digest and caps.
_BPF: dict[tuple[str, tuple[str, ...]], bytes] = {}


@dataclass(eq=False, slots=True)
class NsInstance(PipedInstance):
    """An ns instance: its first process (pid/pidfd once start has run), what create
    made for it and remove undoes."""

    child: process.Child | None = None
    cgroup: bool = False  # its cgroup exists (destroy is idempotent: half-made is fine)
    dir: Path | None = None  # instance dir (upper/work) of a writable layer on disk
    veth: str | None = None
    lease: str | None = None
    address: str | None = None
    net: network.PrivateNet | None = None  # a private network of the run it is on
    vlan: network.Leases | None = None  # its macvlan/ipvlan segment's addresses
    # the further ones (spec.more_networks): each network, the lease and veth it has there
    more: list[tuple[network.PrivateNet, str, str]] = field(default_factory=list)
    more_nets: tuple[network.PrivateNet, ...] = ()
    published: bool = False  # DNAT rules for its published ports may exist
    config: ContainerConfig | None = None  # what it was created with: exec applies it too
    # The name its resources (cgroup, instance dir, veth, lease, DNAT rules) carry: its
    # spec's name, or for an instance taken from ns:pool the slot's (cvbench-<run id>-...)
    key: str = ""
    # detached execs: (helper pid, its pidfd, its output), reaped at remove
    execs: list[tuple[int, int, _proc.Stream]] = field(default_factory=list)


class NsRuntime:
    """`ns`: the writable layer on disk under the state dir, where Docker's overlay2
    keeps it, with Docker's default protections (`protections()` lists them);
    `ns:tmpfs`: the same with the writable layer in a tmpfs (in RAM: its write figures
    compare with no backend on disk); `ns:disk`: another name of `ns`, for the scenarios
    and results that still say it (it was the disk flavour when plain `ns` was in RAM);
    `ns:bare`: ns without the seccomp filter, the device cgroup (so without CAP_MKNOD)
    and the rlimits: ns vs ns:bare is what they cost; `ns:intocgroup` (cgroup v2 only):
    `ns` whose first process is cloned straight into its cgroup (clone3 with
    CLONE_INTO_CGROUP; the cgroup is made before the clone instead of while the child
    sets itself up, and the child writes no cgroup.procs), so ns vs ns:intocgroup in
    one run is what that start path changes. Elsewhere its create raises NotApplicable.
    `ns:pool`: ns with a pool of prepared instances (runtimes.ns.pool.NsPoolRuntime, a
    runtimes.base.Pool)."""

    name = "ns"
    flavours: ClassVar[tuple[str, ...]] = ("tmpfs", "disk", "bare", "intocgroup", "pool")

    def __new__(cls, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> NsRuntime:
        if cls is NsRuntime and flavour == "pool":  # a Pool (runtimes.base), its own class
            from runtimes.ns.pool import NsPoolRuntime

            return super().__new__(NsPoolRuntime)
        return super().__new__(cls)

    def __init__(self, flavour: str | None = None, *, hooks: Hooks = NO_HOOKS) -> None:
        refuse_upper_env()
        self.name = f"ns:{flavour}" if flavour else "ns"
        self.bare = flavour == "bare"
        self.into_cgroup = flavour == "intocgroup"
        self.upper = "tmpfs" if flavour == "tmpfs" else "disk"
        self._cg: cgroups.Manager | None = None
        self._last_cap: int | None = None
        # Looked up once: which masked and read-only paths this kernel has.
        self._masked = rootfs.masks(MASKED_PATHS)
        self._readonly = tuple(p for p in READONLY_PATHS if os.path.exists(p))
        self.rootless = os.geteuid() != 0
        # Explicit rlimits: the runner's own, as Docker's containers get the daemon's
        # (dockerd sets none by default; its containers inherit containerd's).
        self.rlimits = () if self.bare else runner_rlimits()
        self._bpf = b""
        self._caps: tuple[int, ...] = ()

    @property
    def cg(self) -> cgroups.Manager:
        if self._cg is None:
            self._cg = cgroups.new(device_rules=() if self.bare or self.rootless
                                   else DEVICE_RULES)
        return self._cg

    @property
    def device_rules(self) -> tuple[str, ...]:
        """The device allow-list its cgroups enforce (v1: the devices controller; v2: an
        eBPF program); none rootless, for ns:bare, or where the host offers neither."""
        return self.cg.device_rules if self.limits_applied else ()

    @property
    def cap_names(self) -> tuple[str, ...]:
        return caps(bool(self.device_rules))

    def seccomp_profile(self) -> seccomp_mod.Profile | None:
        """The profile ns applies (None: ns:bare); BackendUnavailable without one."""
        if self.bare:
            return None
        path = seccomp_mod.find()
        if path is None:
            raise BackendUnavailable(
                self.name, f"no seccomp profile ({seccomp_mod.DOCKER_PROFILE} or "
                f"{seccomp_mod.CONTAINERS_COMMON_PROFILE})",
                "make provision (scripts/provision.d/26-seccomp.sh), or use ns:bare")
        return seccomp_mod.load(path, self.cap_names)

    @property
    def limits_applied(self) -> bool:
        """Root always; rootless only where the cgroup tree is writable (delegated)."""
        return not self.rootless or (self.cg.check() is None and self.cg.writable())

    def root(self) -> Path:
        return state_dir() / "ns"

    def availability(self) -> Availability:
        reason = validate.host_problem(self.cg, self.rootless)
        versions = {"kernel": platform.release(), "cgroup": self.cg.mode}
        if reason:
            return Availability(ok=False, reason=reason[0], fix=reason[1], versions=versions)
        try:
            profile = self.seccomp_profile()
        except BackendUnavailable as e:
            return Availability(ok=False, reason=e.reason, fix=e.fix, versions=versions)
        except UsageError as e:  # a malformed profile file
            return Availability(ok=False, reason=str(e), fix="fix or replace the file",
                                versions=versions)
        details = {"mode": "rootless (user namespace)"} if self.rootless else {}
        details["seccomp"] = profile.describe() if profile else "none (ns:bare)"
        if not self.rootless:
            userns = validate.userns_problem()
            details["rootless"] = f"forbidden here: {userns[0]} (fix: {userns[1]})" \
                if userns else "possible (run bench as a non-root user)"
        if not self.limits_applied:
            details["limits"] = ("not applied (no writable cgroup tree for this user: run "
                                 "bench in a unit with Delegate=yes, e.g. systemd-run --user "
                                 "-p Delegate=yes --pipe --wait bench ...)")
        elif self.rootless:
            details["limits"] = ("applied in a cgroup tree delegated to this user: "
                                 f"{self.cg.path('-').parent}")
        if self.into_cgroup:  # first: what the flavour is about (doctor cuts long rows)
            problem = self._into_cgroup_problem()
            details = {"clone3": f"not applicable here: {problem}" if problem else
                       "CLONE_INTO_CGROUP (the child is made in its cgroup)", **details}
        if not cgroups.favordynmods():
            details["cgroup migrations"] = "wait for an RCU grace period (scripts/provision " \
                "sets favordynmods where the kernel has it)"
        return Availability(ok=True, versions=versions, details=details)

    def traits(self) -> Traits:
        return Traits(
            kind="container",
            # rootless without a cgroup tree of its own: no limit can be enforced, which
            # studies and reports treat as they do the host's
            not_applied=frozenset() if self.limits_applied else frozenset({"limits"}),
            protections=self.protections(),
            settings={"cgroup": self.cg.mode, "kernel": platform.release(),
                      "start": "clone3(CLONE_PARENT | CLONE_INTO_CGROUP) from a fork "
                      "server, into the cgroup made before it, then exec"
                      if self.into_cgroup else
                      "clone(CLONE_PARENT) from a fork server, then exec",
                      **writable_layer(self.upper, self.root()),
                      "rootless": self.rootless, "limits_applied": self.limits_applied,
                      "cgroup_favordynmods": cgroups.favordynmods()})

    def _into_cgroup_problem(self) -> str | None:
        """Why ns:intocgroup cannot clone into a cgroup here (None: it can)."""
        if self.cg.mode != "v2":
            host = "v1 hybrid" if self.cg.mode == "hybrid" else self.cg.mode
            return f"needs cgroup v2 (this host: {host})"
        if not self.limits_applied:
            return "needs a cgroup tree it may write (rootless without delegation)"
        return None

    def protections(self) -> tuple[str, ...]:
        """What an instance gets, one "what: how" line each (the report lists them next to
        the engines')."""
        profile = self.seccomp_profile()
        if self.device_rules:
            devices = self.cg.devices()
        else:
            # Rootless, none is asked for: an unprivileged user may neither load a device
            # program nor write a v1 device cgroup (and in its user namespace no device
            # node can be made; /dev holds the host's own few, bound).
            why = "ns:bare" if self.bare else \
                "rootless: a device cgroup, v1 or eBPF, needs root" if self.rootless else \
                self.cg.device_problem or "no cgroup for the instances"
            devices = f"no device cgroup ({why}); CAP_MKNOD dropped instead"
        return (
            *protection_lines(self.rlimits, _RRO),
            "user namespace: " + (f"yes, root inside = uid {os.geteuid()}" if self.rootless
                                  else "no (root inside is root, as in Docker)"),
            f"capabilities: {', '.join(self.cap_names)}",
            "seccomp: " + (f"{profile.describe()} (BPF of {len(self._program()) // 8} "
                           "instructions)" if profile else "none (ns:bare)"),
            f"devices: {devices}; nodes {', '.join(d[0] for d in DEVICES)}",
            "keyring: a new session keyring per instance",
            "descriptors: all but 0-2 closed before exec (close_range)",
        )

    def prepare(self, image: Image) -> Prepared:
        # The unpacked image is the shared read-only lower layer; nothing to copy per run.
        # Per-run work done here, before any timing: the fork server, the state dir (and
        # for ns:tmpfs the scratch dir its tmpfs is mounted on, in each instance's mounts).
        _SERVER.start()
        self.root().mkdir(parents=True, exist_ok=True)
        if self.upper == "tmpfs":
            (self.root() / "scratch").mkdir(exist_ok=True)
        if self.limits_applied:
            self.cg.setup()  # the parent cgroups (a finished run removes them when alone)
        if not self.rootless:
            rootfs.make_dev_layer(self.root() / DEV_LAYER, DEVICES)
        self._program()
        return Prepared(image=image, backend=self.name, ref=str(image.rootfs),
                        footprint={"image": du_bytes(image.rootfs)})

    def _program(self) -> bytes:
        """The compiled seccomp filter: once per runner process (prepare() does it before
        any timing), shared by ns and ns:tmpfs; b"" for ns:bare."""
        if not self._bpf and not self.bare:
            profile = self.seccomp_profile()
            assert profile is not None
            key = (profile.sha256, self.cap_names)
            if key not in _BPF:
                _BPF[key] = seccomp_mod.compile_bpf(profile)
            self._bpf = _BPF[key]
        return self._bpf

    def volume(self, run_id: str, name: str) -> Path:
        """A named volume: a directory the harness owns, kept across the run's instances
        (and removed by gc once the run is over)."""
        path = self.root() / "volumes" / f"{PREFIX}{run_id}-{name}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _mounts(self, spec: InstanceSpec, hosts: Path | None = None) -> list[MountPoint]:
        out = list(rootfs.standard_mounts(new_netns=spec.network != "host",
                                          dev_tmpfs=self.rootless))
        if hosts is not None:  # a private network's shared hosts file
            out.append(MountPoint(str(hosts), "etc/hosts", None, namespaces.MS_BIND,
                                  file=True))
        for m in spec.mounts:
            target = m.target.lstrip("/")
            ro = namespaces.MS_RDONLY if m.readonly else 0
            if m.type == "tmpfs":  # Docker's tmpfs flags
                data = f"size={m.size}" if m.size else None
                out.append(MountPoint("tmpfs", target, "tmpfs", rootfs.PROC_FLAGS | ro, data))
                continue
            src = m.source if m.type == "bind" else str(self.volume(spec.run_id,
                                                                    m.source or ""))
            assert src is not None
            # Read-only binds: recursive and all read-only (mount_setattr), or where the
            # kernel lacks it, not recursive: a remount makes only the top mount
            # read-only, so a writable mount below the source must not come along.
            rec = not m.readonly or _RRO
            flags = namespaces.MS_BIND | (namespaces.MS_REC if rec else 0)
            out.append(MountPoint(src, target, None, flags,
                                  readonly_remount=m.readonly and not _RRO,
                                  recursive_readonly=m.readonly and _RRO,
                                  file=not os.path.isdir(src)))
        return out

    def _config(self, spec: InstanceSpec, lower: str, idir: Path | None,
                hosts: Path | None = None, key: str = "",
                pooled: bool = False) -> ContainerConfig:
        flags = BASE_FLAGS
        if spec.network != "host":
            flags |= namespaces.CLONE_NEWNET
        if self.rootless:
            flags |= namespaces.CLONE_NEWUSER
        if self._last_cap is None:
            self._last_cap = security.last_cap()
            self._caps = security.cap_numbers(self.cap_names)
        key = key or spec.name
        return ContainerConfig(
            name=key, lower=lower,
            dev_layer="" if self.rootless else str(self.root() / DEV_LAYER),
            upper=str(idir / "upper") if idir else "", work=str(idir / "work") if idir else "",
            scratch=str(self.root() / "scratch"),
            hostname=spec.hostname, clone_flags=flags,
            cgroup_join=tuple(_split_parent(p) for p in self.cg.join_files(key))
            if self.limits_applied else (),
            mounts=tuple(self._mounts(spec, hosts)), loopback_up=spec.network != "host",
            caps=self._caps, last_cap=self._last_cap,
            rlimits=tuple((RLIMITS[n], soft, hard)
                          for n, soft, hard in with_rlimits(self.rlimits, spec.limits.rlimits)),
            seccomp=self._program(),
            userns_map=(os.geteuid(), os.getegid()) if self.rootless else None,
            masked=tuple(m for m in self._masked
                         if spec.network != "host" or not m[0].startswith("/sys/")),
            readonly=self._readonly, into_cgroup=self.into_cgroup, pooled=pooled,
            **_handed_over(spec))

    def create(self, spec: InstanceSpec, prepared: Prepared) -> Instance:
        validate.spec(spec, self.rootless)
        check_networks(self.name, spec)
        if self.into_cgroup and (problem := self._into_cgroup_problem()):
            raise NotApplicable(f"{self.name}: {problem}")
        return self._create(spec, prepared)

    def _create(self, spec: InstanceSpec, prepared: Prepared,
                pooled: bool = False) -> NsInstance:
        """create()'s work, and ns:pool's for a slot (`pooled`: its cgroup made first,
        for the child to join before it says it is set up; see process.child_main)."""
        inst = NsInstance(spec=spec, prepared=prepared, key=spec.name)
        try:
            idir = None
            if self.upper == "disk":
                idir = inst.dir = self.root() / spec.name
                idir.mkdir()
                (idir / "upper").mkdir()
                (idir / "work").mkdir()
            hosts = None
            if spec.network_name:
                inst.net = network.private_net(self.root() / "nets",
                                               f"{PREFIX}{spec.run_id}-{spec.network_name}")
                hosts = inst.net.hosts
                inst.more_nets = tuple(
                    network.private_net(self.root() / "nets", f"{PREFIX}{spec.run_id}-{n}")
                    for n in spec.more_networks)
                if inst.more_nets:  # (its names are those of all its networks)
                    hosts = network.view((inst.net, *inst.more_nets), inst.key)
            cfg = inst.config = self._config(spec, prepared.ref, idir, hosts, pooled=pooled)
            out_r, out_w = _proc.open_pipe()
            err_r, err_w = _proc.open_pipe()
            inst.out = _proc.Stream(out_r, spec.capture)
            inst.err = _proc.Stream(err_r, spec.capture)
            fds = [out_w, err_w]
            try:
                if self.into_cgroup or (pooled and self.limits_applied):
                    # the cgroup first: the child is cloned into it, or (a slot) joins
                    # it before it says it is set up
                    inst.cgroup = True
                    self.cg.create(spec.name, spec.limits)
                if self.into_cgroup:
                    fds.append(os.open(self.cg.path(spec.name),
                                       os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
                inst.child = process.spawn(_SERVER, cfg, out_w, err_w,
                                           fds[2] if self.into_cgroup else None)
            finally:
                for fd in fds:
                    os.close(fd)
            if self.limits_applied and not inst.cgroup:
                # Made while the child sets itself up; it joins at start.
                inst.cgroup = True
                self.cg.create(spec.name, spec.limits)
            if spec.network == "bridge":
                self._attach(inst)  # before start: the child cannot exec until then
            elif spec.network in VLAN_MODES:
                self._attach_vlan(inst)
        except (process.SetupError, ForkServerError) as e:
            self.remove(inst)
            raise InstanceError(f"ns: {e}") from None
        except BaseException:
            self.remove(inst)
            raise
        return inst

    def _attach(self, inst: NsInstance) -> None:
        assert inst.child is not None
        addr = self._leases(inst).acquire(inst.key)
        inst.lease = inst.address = str(addr)
        inst.veth = network.attach(inst.child.resolve(), inst.key, addr, inst.net)
        names = (inst.spec.hostname, *inst.spec.aliases)
        if inst.net is not None:
            inst.net.add_host(str(addr), names)
        for i, net in enumerate(inst.more_nets, 1):
            addr = net.leases.acquire(inst.key)
            lease = str(addr)
            inst.more.append((net, lease, ""))  # (released at remove, if attach fails)
            veth = network.attach(inst.child.resolve(), inst.key, addr, net, i)
            inst.more[-1] = (net, lease, veth)
            net.add_host(lease, names)
        self._publish(inst)

    def _attach_vlan(self, inst: NsInstance) -> None:
        """An eth0 of the spec's mode on the run's own segment (runtimes/_vlan.py), with
        an address of its /24 leased under the segment's own state dir."""
        assert inst.child is not None
        seg = _vlan.segment(inst.spec.run_id, "ns", inst.spec.network)
        inst.vlan = network.Leases(self.root() / seg.name, seg.subnet)
        addr = inst.vlan.acquire(inst.key)
        inst.lease = inst.address = str(addr)
        try:
            _vlan.attach(seg, inst.child.resolve(), addr)
        except InstanceError as e:
            raise InstanceError(f"{self.name}: network {inst.spec.network}: {e}") from None

    def _publish(self, inst: NsInstance) -> None:
        if inst.spec.publish:
            assert inst.address is not None
            inst.published = True
            _publish.publish(self.name, inst.key, inst.address, inst.spec.publish)

    def _leases(self, inst: NsInstance) -> network.Leases:
        if inst.vlan is not None:
            return inst.vlan
        return inst.net.leases if inst.net else network.Leases(self.root() / "ipam")

    def remove_network(self, run_id: str, name: str) -> None:
        network.remove_private_net(self.root() / "nets", f"{PREFIX}{run_id}-{name}")

    def exec(self, inst: Instance, argv: Sequence[str], *, user: str = "",
             env: Mapping[str, str] | None = None, workdir: str = "/",
             timeout: float = 30.0, detach: bool = False) -> Exit:
        """Run `argv` in the instance as `docker exec` does, with exactly its protections:
        process.exec_main joins every namespace of its first process (user ns too,
        rootless) and forks the process that joins its cgroup, chroots into its root
        (/proc/PID/root), changes to `workdir` there and applies the ContainerConfig the
        instance was created with (capabilities: the instance's set for root, none for
        any other user; bounding set, no_new_privs, rlimits, session keyring, the same
        compiled seccomp program) before it execs `argv` (on the instance's PATH). Its
        environment is the instance's, with `env` over it and CVBENCH_EXEC=<token>.

        On timeout every process of the exec is killed: the helper's descendants (the
        command and what it forked, setsid or not) and every process of the instance
        whose environment has the exec's CVBENCH_EXEC (a double fork leaves the tree,
        its orphan going to the instance's PID 1). Each is SIGSTOPped and the search
        repeated until it finds nothing new, then all are SIGKILLed: a stopped process
        cannot fork, so none is born between the search and the kill. A process that
        both leaves the tree and clears its environment is missed: it keeps the
        instance's protections and dies with the instance. `detach`: the helper is
        reaped at remove, its output kept unread (cf. the protocol)."""
        inst, _ = self._child(inst)
        cfg, name = inst.config, inst.spec.name
        if cfg is None or not inst.pid or inst.exited:
            raise InstanceError(f"ns: exec {argv[0]}: {name} is not running")
        deadline = time.monotonic() + timeout
        uid, gid = uid_gid(user)
        marker = f"CVBENCH_EXEC={secrets.token_hex(8)}"
        envs = dict(e.split("=", 1) for e in cfg.env) | dict(env or {})  # as docker exec -e
        x = ExecConfig(record.replace(
            cfg, argv=tuple(argv), env=(*(f"{k}={v}" for k, v in envs.items()), marker),
            workdir=workdir, uid=uid, gid=gid, groups=()))
        try:
            root = os.open(f"/proc/{inst.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise InstanceError(f"ns: exec {argv[0]}: {name} is gone ({e.strerror})") from e
        out_r, out_w = _proc.open_pipe()
        try:
            if _proc.readable(inst.pidfd):  # gone: the pid (so that root) may be another's
                raise InstanceError(f"ns: exec {argv[0]}: {name} has exited")
            pid, pidfd, status = process.exec_start(_SERVER, x, inst.pidfd, root, out_w,
                                                    timeout)
        except ForkServerError as e:
            os.close(out_r)
            raise InstanceError(f"ns: {e}") from None
        except BaseException:
            os.close(out_r)
            raise
        finally:
            os.close(out_w)
            os.close(root)
        out, kept = _proc.Stream(out_r, False), False
        try:
            if status:  # a step failed: the helper exits (127)
                os.waitpid(pid, 0)
                raise InstanceError(f"ns: exec {argv[0]}: {status[1:].decode(errors='replace')}")
            if status is not None and detach:
                inst.execs.append((pid, pidfd, out))
                kept = True
                return Exit(code=0, t_ns=time.monotonic_ns())
            if status is not None:
                try:
                    code, t = _proc.wait_pid(pid, pidfd, [out], deadline - time.monotonic())
                    return Exit(code=code, t_ns=t, stdout=bytes(out.data[-4096:]))
                except InstanceError:
                    pass  # timed out: killed below
            self._kill_exec(inst, pid, pidfd, marker)
            raise InstanceError(f"ns: exec {argv[0]}: still running after {timeout:g} s")
        finally:
            if not kept:
                os.close(pidfd)
                out.close()

    def _kill_exec(self, inst: NsInstance, helper: int, helper_fd: int, marker: str) -> None:
        """SIGKILL every process of an exec (see exec), then its helper; reap the helper."""
        held: dict[int, int] = {}  # pid -> pidfd, each SIGSTOPped
        tag = marker.encode()
        try:
            while True:
                try:
                    tree = {p.pid for p in psutil.Process(helper).children(recursive=True)}
                except psutil.NoSuchProcess:
                    tree = set()
                # the instance's processes: its cgroup's, or (no cgroup) PID 1's tree
                members = self.cg.pids(inst.key) if inst.cgroup \
                    else memory.descendants(inst.pid)
                found = {p for p in members if p not in tree and _has_env(p, tag)} | tree
                found -= held.keys()
                if not found:
                    break
                for pid in found:
                    try:
                        held[pid] = os.pidfd_open(pid)
                    except ProcessLookupError:
                        continue  # (gone: not found again)
                    _proc.kill(pid, held[pid], signal.SIGSTOP)
            for pid, fd in held.items():
                _proc.kill(pid, fd, signal.SIGKILL)
        finally:
            for fd in held.values():
                os.close(fd)
        _proc.kill(helper, helper_fd)
        os.waitpid(helper, 0)

    def _child(self, inst: Instance) -> tuple[NsInstance, process.Child]:
        inst = own(inst, NsInstance)
        if inst.child is None:
            raise InstanceError(f"ns: {inst.spec.name} was never created")
        return inst, inst.child

    def start(self, inst: Instance) -> None:
        inst, child = self._child(inst)
        try:
            assert inst.config is not None
            process.release(child, SETUP_TIMEOUT, process.handover(inst.config))
        except process.SetupError as e:
            err = inst.streams()[1]
            raise InstanceError(f"ns: setting up {inst.spec.name} failed: {e} "
                                f"{bytes(err.data[-300:])!r}") from None
        except ForkServerError as e:
            raise InstanceError(f"ns: {e}") from None
        finally:
            if child.pid:  # the instance owns the pidfd from here on
                inst.pid, inst.pids, inst.pidfd = child.pid, [child.pid], child.pidfd
                child.pidfd = -1

    def wait_ready(self, inst: Instance, timeout: float) -> int:
        return _proc.ready(inst, own(inst, NsInstance).streams()[0], timeout)

    def wait_output(self, inst: Instance, pattern: re.Pattern[bytes], timeout: float) -> int:
        return _proc.output(own(inst, NsInstance), pattern, timeout)

    def wait_exit(self, inst: Instance, timeout: float) -> Exit:
        inst = own(inst, NsInstance)
        return _proc.exited(inst, timeout, lambda: bool(
            inst.cgroup and self.cg.oom_killed(inst.key)))

    def stats(self, inst: Instance) -> Stats:
        inst, child = self._child(inst)
        if inst.cgroup:
            pids = self.cg.pids(inst.key)
            usage: int | None = self.cg.memory_usage(inst.key)
        else:
            pids, usage = memory.descendants(child.resolve()), None
        m = memory.processes_memory(pids)
        return Stats(pids=tuple(pids), pss=m.pss, uss=m.uss, rss=m.rss, cgroup=usage)

    def stop(self, inst: Instance, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after `grace`. PID 1 of a pid namespace gets SIGTERM only
        if it handles it (the kernel drops it otherwise), so a plain `sleep` needs the
        SIGKILL, as with `docker stop`. Killing PID 1 kills the whole namespace."""
        inst = own(inst, NsInstance)
        child = inst.child
        if child is None or inst.exited:
            return
        if child.go_w >= 0:  # created, never started
            process.abort(child)
        elif inst.pid:
            inst.stopped = _proc.reap(inst.pid, inst.pidfd, grace)
        inst.exited = True

    def daemons(self) -> dict[str, list[int]]:
        # No daemon; the fork server is this runner's helper, reported so its memory is
        # not hidden.
        return {"ns fork server": [_SERVER.pid]} if _SERVER.pid else {}

    def disk_usage(self, inst: Instance) -> int | None:
        inst = own(inst, NsInstance)
        if inst.dir is not None:
            return du_bytes(inst.dir / "upper")
        child = inst.child
        if child is None or inst.exited:
            return None
        # ns:tmpfs: overlayfs' statfs reports its upper filesystem, our private tmpfs.
        try:
            st = os.statvfs(f"/proc/{child.pid}/root")
        except OSError:
            return None
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def address(self, inst: Instance) -> str | None:
        if inst.spec.network == "host":
            return "127.0.0.1"
        return own(inst, NsInstance).address  # bridge: its own (none: no address)

    def remove(self, inst: Instance) -> None:
        self.stop(inst, grace=0)
        inst = own(inst, NsInstance)
        child = inst.child
        if child is not None and child.pidfd >= 0:
            os.close(child.pidfd)
            child.pidfd = -1
        inst.release()
        for pid, pidfd, out in inst.execs:  # dead with the instance's pid namespace
            _proc.reap(pid, pidfd, 0)
            os.close(pidfd)
            out.close()
        inst.execs.clear()
        if inst.cgroup:
            self.cg.destroy(inst.key)
            inst.cgroup = False
        if inst.veth and os.path.exists(f"/sys/class/net/{inst.veth}"):
            network.delete_link(inst.veth)  # normally gone with the instance's netns
        inst.veth = None
        if inst.published:
            _publish.unpublish(self.name, inst.key)
            inst.published = False
        if inst.lease:
            if inst.net is not None:
                inst.net.remove_host(inst.lease)
            self._leases(inst).release(inst.lease)
            inst.lease = None
        for net, lease, veth in inst.more:
            if veth and os.path.exists(f"/sys/class/net/{veth}"):
                network.delete_link(veth)
            net.remove_host(lease)
            net.leases.release(lease)
        inst.more.clear()
        if inst.more_nets and inst.net is not None:
            network.drop_view((inst.net, *inst.more_nets), inst.key)
            inst.more_nets = ()
        if inst.dir is not None:
            _remove_instance_dir(inst.dir)
            inst.dir = None

    def leftovers(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        def dead(name: str) -> bool:
            return name.startswith(PREFIX) and run_of(name) not in live_runs

        found = [Leftover(self.name, "cgroup", n, run_of(n)) for n in self.cg.names()
                 if dead(n)]
        for sub in (self.root(), self.root() / "volumes"):
            if sub.is_dir():
                found += [Leftover(self.name, "dir", str(p), run_of(p.name))
                          for p in sorted(sub.iterdir()) if dead(p.name)]
        found += [Leftover(self.name, "lease", addr, run_of(owner))
                  for addr, owner in network.Leases(self.root() / "ipam").owners().items()
                  if dead(owner)]
        found += [Leftover(self.name, "link", link, run_of(alias))
                  for link, alias in network.links().items() if dead(alias)]
        found += [Leftover(self.name, "network", n, run_of(n))
                  for n in network.private_nets(self.root() / "nets") if dead(n)]
        found += [Leftover(self.name, "dnat", name, run_of(name))
                  for name in _publish.rules(self.name) if dead(name)]
        found += [Leftover(self.name, "vlan-parent", link, run_of(name))
                  for link, name in _vlan.parents("ns").items() if dead(name)]
        if not live_runs:  # shared by every run: removed when no run is going
            if not network.bridge_in_use() and \
                    os.path.exists(f"/sys/class/net/{network.BRIDGE}"):
                found.append(Leftover(self.name, "bridge", network.BRIDGE, None))
            for layer in (self.root() / "devlayer", self.root() / DEV_LAYER):
                if layer.is_dir():
                    found.append(Leftover(self.name, "layer", str(layer), None))
            found += [Leftover(self.name, "dir", str(d), None)
                      for d in empty_dirs(*self._shared_dirs())]
            found += cgroup_parents(self.name, self.cg)
        return found

    def _shared_dirs(self) -> tuple[Path, ...]:
        """Dirs every run uses, in the order they can be removed (the root last)."""
        return (self.root() / "scratch", self.root() / "ipam", self.root() / "volumes",
                self.root() / "nets", self.root())

    def gc(self, live_runs: Sequence[str] = ()) -> list[Leftover]:
        def remove(item: Leftover) -> bool | None:
            if item.kind == "cgroup":
                self.cg.kill(item.name)
                self.cg.destroy(item.name)
            elif item.kind == "layer" or (item.kind == "dir" and item.run_id is not None):
                _rmtree(Path(item.name))
            elif item.kind in ("dir", "cgroup-parent"):
                try:  # a directory every run shares
                    os.rmdir(item.name)
                except OSError:  # in use again by another run, or not empty: left alone
                    return False
            elif item.kind == "lease":
                network.Leases(self.root() / "ipam").release(item.name)
            elif item.kind == "link":
                network.delete_link(item.name)
            elif item.kind == "network":
                network.remove_private_net(self.root() / "nets", item.name)
            elif item.kind == "dnat":
                _publish.unpublish(self.name, item.name)
            elif item.kind == "vlan-parent":
                _vlan.remove(item.name)
            elif item.kind == "bridge":
                network.remove_bridge()
            return None

        try:
            return remove_each(self.name, self.leftovers(live_runs), remove)
        finally:
            if not live_runs:  # what the removals above emptied (the dev layer's parent...)
                for d in empty_dirs(*self._shared_dirs()):
                    with contextlib.suppress(OSError):  # (shared: in use again)
                        os.rmdir(d)




def _handed_over(spec: InstanceSpec) -> dict[str, Any]:
    """The config's HANDED_OVER values for `spec`: what a cold instance is created
    with, and what a pool's slot is handed when it is taken (the same values)."""
    env = {"PATH": PATH_ENV, "HOME": "/root", "HOSTNAME": spec.hostname,
           "CVBENCH_NONCE": spec.nonce, **spec.env}
    uid, gid = uid_gid(spec.user)
    return {"argv": ("/bench/init", *spec.argv),
            "env": tuple(f"{k}={v}" for k, v in env.items()),
            "workdir": spec.workdir, "uid": uid, "gid": gid}


def _has_env(pid: int, entry: bytes) -> bool:
    """Whether process `pid` was started with `entry` ("KEY=value") in its environment."""
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False  # gone (or a kernel thread)


def _split_parent(procs: str) -> tuple[str, str]:
    """".../cvbench/<name>/cgroup.procs" -> (".../cvbench", "<name>/cgroup.procs")."""
    parent, name, leaf = procs.rsplit("/", 2)
    return parent, f"{name}/{leaf}"




def _remove_instance_dir(idir: Path) -> None:
    """rmdir the few directories an instance that wrote nothing leaves (overlayfs makes
    work/work, and sometimes work/index; never `volatile` on disk); anything else falls
    back to a full rmtree."""
    try:
        for sub in ("work/work", "work/index"):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(idir / sub)
        for sub in ("upper", "work", ""):
            os.rmdir(idir / sub)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise
        _rmtree(idir)


def _rmtree(path: Path) -> None:
    # The overlay's work dir holds a root-only "work" subdir; rmtree copes as root.
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise InstanceError(f"ns: cannot remove {path}")



if TYPE_CHECKING:  # mypy holds the backend to the protocol and the registry's constructor
    from runtimes.base import Exec, Networks, Runtime, RuntimeClass

    _networks: Networks = NsRuntime()  # it runs stacks: private networks with names, exec
    _exec: Exec = NsRuntime()
    _instance: Runtime = NsRuntime()
    _class: RuntimeClass = NsRuntime
