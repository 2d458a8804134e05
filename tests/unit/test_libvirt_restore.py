"""libvirt:restore's pure parts: the save image's header, a clone's XML, the FIFO that
feeds libvirt, the guest's reseed helper, the template's command line."""

from __future__ import annotations

import base64
import errno
import struct
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.core.errors import InstanceError
from harness.core.image import Image
from runtimes import libvirt as lv
from runtimes.base import InstanceSpec, Limits, Mount, Pool, Prepared
from runtimes.vm import initramfs, template

TEMPLATE_XML = """<domain type='qemu' id='12'>
  <name>cvbench-abcdef0123-template-aa</name>
  <uuid>0d8a7b65-c02a-4045-943f-21e25057d31c</uuid>
  <devices>
    <interface type='network'>
      <mac address='52:54:00:b6:09:9a'/>
      <source network='default' portid='daa41598-f6ad-4b60-abfc-ca9c9ad0c6b3'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
    <serial type='unix'>
      <source mode='bind' path='/s/libvirt/cvbench-abcdef0123-template-aa/console.sock'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='/s/libvirt/cvbench-abcdef0123-template-aa/agent.sock'/>
      <target type='virtio' name='org.cvbench.agent'/>
    </channel>
    <disk type='file'><source file='/s/libvirt/volumes/v.raw'/></disk>
  </devices>
</domain>"""
COOKIE = b"<cookie>\n  <cpu mode='custom'/>\n</cookie>\n"
STREAM = bytes(range(256)) * 64  # stands for QEMU's migration stream


def _save_file(tmp_path: Path, data_len: int = 8192) -> Path:
    """A save image laid out as libvirt 9's virQEMUSaveHeader says: 16 bytes of magic,
    19 little-endian uint32 (version, data_len, was_running, compressed, cookieOffset,
    14 unused), data_len bytes of XML\\0 + cookie + NUL padding, then the stream."""
    xml = TEMPLATE_XML.encode() + b"\0"
    data = (xml + COOKIE).ljust(data_len, b"\0")
    head = b"LibvirtQemudSave" + struct.pack("<5I", 2, data_len, 1, 0, len(xml)) + bytes(56)
    path = tmp_path / "t.save"
    path.write_bytes(head + data + STREAM)
    return path


def test_save_image_header_is_read_and_rewritten_in_place(tmp_path: Path) -> None:
    image = template.SaveImage.read(_save_file(tmp_path))
    assert image.xml == TEMPLATE_XML and image.cookie == COOKIE
    assert image.offset == 92 + 8192  # 16 + 19 * 4 bytes of header, then the data
    new = TEMPLATE_XML.replace("template-aa", "7")
    head = image.header_for(new)
    assert len(head) == image.offset  # the stream does not move
    again = tmp_path / "c.save"
    again.write_bytes(head + STREAM)
    clone = template.SaveImage.read(again)
    assert clone.xml == new and clone.cookie == COOKIE and clone.offset == image.offset
    assert struct.unpack_from("<I", head, 16 + 4 * 4)[0] == len(new) + 1  # cookieOffset
    with pytest.raises(InstanceError, match="does not fit"):
        image.header_for("x" * 9000)


def test_save_image_refuses_what_it_cannot_feed(tmp_path: Path) -> None:
    path = _save_file(tmp_path)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 16 + 3 * 4, 1)  # gzip-compressed
    path.write_bytes(bytes(raw))
    with pytest.raises(InstanceError, match="compression 1"):
        template.SaveImage.read(path)
    path.write_bytes(b"LibvirtQemudPart" + bytes(raw[16:]))  # a save that did not finish
    with pytest.raises(InstanceError, match="not a complete"):
        template.SaveImage.read(path)


def test_clone_xml_changes_only_what_a_clone_must_not_share() -> None:
    out = template.clone_xml(TEMPLATE_XML, name="cvbench-abcdef0123-7",
                             uuid="11111111-2222-3333-4444-555555555555",
                             mac="52:54:00:01:02:03",
                             dirs={"/s/libvirt/cvbench-abcdef0123-template-aa":
                                   "/s/libvirt/cvbench-abcdef0123-7"})
    root, old = ET.fromstring(out), ET.fromstring(TEMPLATE_XML)
    assert root.get("id") is None
    assert root.findtext("name") == "cvbench-abcdef0123-7"
    assert root.findtext("uuid") == "11111111-2222-3333-4444-555555555555"
    nic = root.find("devices/interface")
    assert nic is not None and nic.find("mac").get("address") == "52:54:00:01:02:03"  # type: ignore[union-attr]
    assert nic.find("source").attrib == {"network": "default"}  # type: ignore[union-attr]
    assert nic.find("alias").get("name") == "net0"  # type: ignore[union-attr]
    paths = [s.get("path") or s.get("file") for s in root.iter("source")][1:]
    assert paths == ["/s/libvirt/cvbench-abcdef0123-7/console.sock",
                     "/s/libvirt/cvbench-abcdef0123-7/agent.sock",
                     "/s/libvirt/volumes/v.raw"]
    assert len(list(root.iter())) == len(list(old.iter()))  # nothing added or dropped


def test_fifo_feeds_the_clones_header_then_the_stream_unchanged(tmp_path: Path) -> None:
    image = template.SaveImage.read(_save_file(tmp_path))
    got: list[bytes] = []

    def restore(path: str) -> None:  # what libvirtd does: read the file to its end
        with open(path, "rb") as f:
            got.append(f.read())

    fifo = tmp_path / "restore.fifo"
    template.restore_through_fifo(image, "<domain><name>c</name></domain>", fifo, restore)
    assert got == [image.header_for("<domain><name>c</name></domain>") + STREAM]
    assert not fifo.exists()


@pytest.mark.parametrize("reads", [None, 100])
def test_fifo_feeder_ends_when_libvirt_refuses(tmp_path: Path, reads: int | None) -> None:
    """libvirt failing before it opens the file, or after reading the header only: the
    error comes through and no feeder thread is left blocked on the FIFO."""
    image = template.SaveImage.read(_save_file(tmp_path))
    before = threading.active_count()

    def restore(path: str) -> None:
        if reads is not None:
            with open(path, "rb") as f:
                f.read(reads)
        raise InstanceError("refused")

    with pytest.raises(InstanceError, match="refused"):
        template.restore_through_fifo(image, TEMPLATE_XML, tmp_path / "f", restore,
                                      timeout=10)
    assert threading.active_count() == before and not (tmp_path / "f").exists()


def test_reseed_helper_reaches_its_ioctl_on_stdout(tmp_path: Path) -> None:
    """The hand-made ELF runs, reads stdin and makes RNDADDENTROPY on fd 1: on a file
    that is no random device the kernel answers ENOTTY, which becomes its exit status.
    (On /dev/urandom it would reseed this host's generator: not done here.)"""
    helper = tmp_path / "cvbench-reseed"
    helper.write_bytes(initramfs.RESEED)
    helper.chmod(0o755)
    info = struct.pack("<ii", 0, 8) + bytes(8)
    proc = subprocess.run([str(helper)], input=info, stdout=subprocess.DEVNULL, check=False)
    assert proc.returncode == errno.ENOTTY
    with (tmp_path / "plain").open("wb") as out:
        proc = subprocess.run([str(helper)], input=info, stdout=out, check=False)
    assert proc.returncode == errno.ENOTTY
    # the two requests, as <linux/random.h> numbers them: _IOW('R', 3, int[2]), _IO('R', 7)
    assert struct.pack("<I", 0x40085203) in initramfs.RESEED
    assert struct.pack("<I", 0x5207) in initramfs.RESEED


def _spec(**kw: object) -> InstanceSpec:
    base: dict[str, object] = dict(run_id="abcdef0123", name="cvbench-abcdef0123-1",
                                   argv=("sh", "-c", "echo hi"), env={"K": "v"})
    base.update(kw)
    return InstanceSpec(**base)  # type: ignore[arg-type]


def test_a_templates_command_line_holds_nothing_of_an_instance() -> None:
    rt = lv.LibvirtRuntime("restore")
    spec = _spec(network="bridge", agent=True, user="5:6")
    line = rt.cmdline(spec, ["virtio_pci"], [], template=True).split()
    names = {w.split("=", 1)[0] for w in line if w.startswith("CVBENCH_")}
    assert names == {"CVBENCH_VM", "CVBENCH_MODULES", "CVBENCH_NONCE", "CVBENCH_TEMPLATE"}
    # ... which the hand-over carries instead, as a cold boot's command line has them
    cold = {w for w in rt.cmdline(spec, ["virtio_pci"], []).split() if w.startswith("CVBENCH_")}
    handed = set(rt.instance_vars(spec))
    assert handed == cold - {"CVBENCH_VM=1", "CVBENCH_MODULES=virtio_pci"}
    assert "CVBENCH_NET=eth0" in handed and "CVBENCH_USER=5:6" in handed


def test_restore_flavours_are_the_only_libvirt_ones_with_a_pool() -> None:
    for flavour in ("restore", "restore-save"):
        rt = lv.LibvirtRuntime(flavour)
        assert isinstance(rt, Pool) and isinstance(rt, lv.LibvirtRestore)
        # the default clones share their template's RAM file; -save is virDomainSave's
        assert rt.name == f"libvirt:{flavour}" and rt.shared == (flavour == "restore")
    for other in (None, "microvm", "disk"):
        assert not isinstance(lv.LibvirtRuntime(other), Pool)


def test_a_memory_file_replaces_libvirts_ram_object_on_the_command_line() -> None:
    from runtimes.vm import domain

    base = dict(name="cvbench-abcdef0123-1", domain_type="qemu", machine="pc",
                memory_kib=1024, vcpus=1, kernel="/k", initrd="/i", cmdline="c",
                console="/c.sock")
    plain = domain.DomainConfig(**base)  # type: ignore[arg-type]
    assert domain.qemu_args(plain) == []
    assert ET.fromstring(domain.to_xml(plain)).find(
        f"{{{domain.QEMU_NS}}}commandline") is None
    tmpl = domain.DomainConfig(**base, memory_file="/s/t.mem",  # type: ignore[arg-type]
                               memory_file_shared=True, network="default", mac="52:54:00:aa:bb:cc")
    root = ET.fromstring(domain.to_xml(tmpl))
    args = [a.get("value") for a in root.iter(f"{{{domain.QEMU_NS}}}arg")]
    assert args == ["-object", "memory-backend-file,id=cvbench-ram,size=1048576,"
                    "mem-path=/s/t.mem,share=on", "-machine", "memory-backend=cvbench-ram"]
    assert root.find("devices/interface/mac").get("address") == "52:54:00:aa:bb:cc"  # type: ignore[union-attr]
    clone = domain.DomainConfig(**base, memory_file="/s/t.mem",  # type: ignore[arg-type]
                                incoming=True)
    assert domain.qemu_args(clone)[1].endswith("share=off")
    assert domain.qemu_args(clone)[-2:] == ["-incoming", "defer"]


def test_an_unfilled_pool_has_nothing_ready() -> None:
    rt = lv.LibvirtRestore("restore-save")
    assert rt.ready() == 0 and rt.slots() == []
    rt.drain()  # idempotent, nothing to stop


def test_a_template_fits_only_specs_with_its_image_limits_network_and_mounts() -> None:
    def prepared(digest: str) -> Prepared:
        img = Image(name="i", digest=digest, tar=Path("/x"), rootfs=Path("/x"), size=1)
        return Prepared(image=img, backend="libvirt:restore", ref="r")

    prep = prepared("d1")
    t = lv._Template(spec=_spec(), prepared=prep, size=1, files=(Path("/t.save"),))
    assert lv._fits(t, _spec(name="cvbench-abcdef0123-9", argv=("true",), nonce="n",
                             hostname="h", env={"A": "b"}, user="1:1"), prep)
    assert not lv._fits(t, _spec(network="bridge"), prep)
    assert not lv._fits(t, _spec(limits=Limits(memory=64 << 20)), prep)
    assert not lv._fits(t, _spec(mounts=(Mount("tmpfs", "/t"),)), prep)
    assert not lv._fits(t, _spec(), prepared("d2"))


def test_handed_over_vars_decode_as_the_guest_does() -> None:
    spec = _spec(argv=("sh", "-c", "echo 'a b'\n"))
    words = [lv._enc(w) for w in lv.LibvirtRuntime.instance_vars(spec)]
    decoded = [base64.b64decode(w).decode()[1:-1] for w in words]
    argv = next(v for v in decoded if v.startswith("CVBENCH_ARGV="))
    assert [base64.b64decode(a).decode()[1:-1] for a in argv.split("=", 1)[1].split(",")] \
        == ["sh", "-c", "echo 'a b'\n"]
    assert all(" " not in w and "," not in w for w in words)  # one word each


# The VM init's lines that take a clone's hand-over script and its argv, as they are in
# VM_INIT (checked below), run by the busybox the guest runs.
EVAL_SCRIPT = 'eval "$(base64 -d <<EOF\n$script\nEOF\n)"\n'
SET_ARGS = '[ -z "$CVBENCH_ARGS" ] || eval "set -- $CVBENCH_ARGS"\n'


@pytest.mark.parametrize("argv", [("sh", "-c", "echo 'a  b' \"$X\" `id`\n;$(x)"),
                                  ("sleep", "3600"), ()])
def test_a_clones_handover_script_gives_the_guest_exactly_the_specs_env_and_argv(
        argv: tuple[str, ...]) -> None:
    assert EVAL_SCRIPT in initramfs.VM_INIT and SET_ARGS in initramfs.VM_INIT
    env = {"K": "v", "Q": "it's \"quoted\" $HOME `x`", "NL": "a\nb", "E": "", "C": "1,2"}
    spec = _spec(argv=argv, env=env, user="5:6", network="bridge", agent=True)
    script = base64.b64encode(lv.LibvirtRuntime.handover_script(spec).encode()).decode()
    # the guest's shell prints, NUL-separated, its environment and then its arguments
    dump = ("set --\n" + EVAL_SCRIPT + SET_ARGS + "env -0; printf '\\1\\0'; "
            "for a in \"$@\"; do printf '%s\\0' \"$a\"; done\n")
    out = subprocess.run([str(initramfs.busybox()), "sh", "-c", dump],
                         env={"script": script}, capture_output=True, check=True).stdout
    got_env, got_argv = out.split(b"\1\0")
    exported = dict(e.decode().split("=", 1) for e in got_env.split(b"\0")[:-1])
    assert {k: exported[k] for k in env} == env
    assert exported["CVBENCH_NONCE"] == spec.nonce and exported["CVBENCH_USER"] == "5:6"
    assert exported["CVBENCH_NET"] == "eth0" and exported["CVBENCH_AGENT"] == "1"
    # what a cold boot's command line carries, the hand-over carries too
    flags = {w for w in lv.LibvirtRuntime.instance_vars(spec)
             if not w.startswith(("CVBENCH_ENV=", "CVBENCH_ARGV="))}
    assert flags <= {f"{k}={v}" for k, v in exported.items()}
    assert tuple(a.decode() for a in got_argv.split(b"\0")[:-1]) == argv


def test_restores_pool_is_its_prepared_clones_sharing_the_templates_files(
        tmp_path: Path) -> None:
    from runtimes.vm import domain

    img = Image(name="i", digest="d1", tar=Path("/x"), rootfs=Path("/x"), size=1)
    prep = Prepared(image=img, backend="libvirt:restore", ref="r")
    files = (tmp_path / "t.stream", tmp_path / "t.mem")
    files[0].write_bytes(b"s" * 5000)
    files[1].write_bytes(b"m" * 70000)
    cfg = domain.DomainConfig(name="t", domain_type="qemu", machine="pc", memory_kib=1024,
                              vcpus=1, kernel="/k", initrd="/i", cmdline="c", console="/c")
    vms = [lv.VmInstance(spec=_spec(name=f"cvbench-abcdef0123-clone-{i}"), prepared=prep,
                         pids=[100 + i]) for i in range(3)]
    rt = lv.LibvirtRestore("restore")
    rt._pool = lv._Template(spec=_spec(), prepared=prep, size=3, files=files, cfg=cfg,
                            vms=vms)
    assert rt.ready() == 3
    slots = rt.slots()
    assert [s.pids for s in slots] == [(100,), (101,), (102,)]
    assert [s.details["domain"] for s in slots] == [v.spec.name for v in vms]
    # each an equal share of what the template's files hold on disk, adding up to it
    assert sum(s.disk_bytes or 0 for s in slots) == sum(f.stat().st_blocks * 512
                                                          for f in files)
    rt._pool.vms.clear()
    assert rt.ready() == 0 and rt.slots() == []
