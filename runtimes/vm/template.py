"""A template VM's saved memory (libvirt's save image) and the clones restored from it.

libvirt's save file is a header, the domain XML (and a cookie: the guest CPU), then
QEMU's migration stream. Restoring with another XML is refused unless the domain's ABI
is the same, and to libvirt that includes the name and the UUID: two clones could not
run side by side. So a clone's restore reads a file of its own, a FIFO, into which the
host writes the template's header with the clone's XML (same length, so the stream's
offset does not move) and then the template's stream, unchanged, by sendfile: no copy
of the memory on disk per clone, and libvirt restores it as any save image.

What a clone's XML changes (`clone_xml`): its name, UUID, MAC address and the unix
sockets (console, guest agent) under its own directory; the devices and their
addresses stay the template's, as the stream needs. A MAC in the XML only sets what
the host side (and libvirt's DHCP lease lookup) knows: the guest's virtio-net device
comes back with the template's MAC from the stream, and the guest sets the clone's
(runtimes/vm/initramfs.py, the template hand-over).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import InstanceError

MAGIC = b"LibvirtQemudSave"
# virQEMUSaveHeader: magic, version, data_len, was_running, compressed, cookieOffset,
# 14 unused words; then data_len bytes: the XML (NUL-terminated), the cookie, padding.
HEADER = struct.Struct("<16s19I")
VERSION, DATA_LEN, COMPRESSED, COOKIE = 0, 1, 3, 4


@dataclass(frozen=True)
class SaveImage:
    path: Path
    fields: tuple[int, ...]
    xml: str
    cookie: bytes

    @property
    def offset(self) -> int:
        """Where QEMU's migration stream starts in the file."""
        return HEADER.size + self.fields[DATA_LEN]

    @classmethod
    def read(cls, path: Path) -> SaveImage:
        with path.open("rb") as f:
            head = f.read(HEADER.size)
            if len(head) < HEADER.size or not head.startswith(MAGIC):
                raise InstanceError(f"{path}: not a complete libvirt save image")
            _, *fields = HEADER.unpack(head)
            if fields[VERSION] != 2 or fields[COMPRESSED] != 0:
                raise InstanceError(f"{path}: save image version {fields[VERSION]}, "
                                    f"compression {fields[COMPRESSED]}: only 2, raw")
            data = f.read(fields[DATA_LEN])
        end = fields[COOKIE] or len(data)
        return cls(path, tuple(fields), data[:end].split(b"\0", 1)[0].decode(),
                   data[end:].rstrip(b"\0") if fields[COOKIE] else b"")

    def header_for(self, xml: str) -> bytes:
        """The header and data of a save image of `xml`, as long as this one's."""
        text = xml.encode() + b"\0"
        data = text + self.cookie + b"\0"
        if len(data) > self.fields[DATA_LEN]:
            raise InstanceError(f"{self.path}: a clone's XML ({len(text)} bytes) does not "
                                "fit in the template's header")
        fields = list(self.fields)
        fields[COOKIE] = len(text) if self.cookie else 0
        return HEADER.pack(MAGIC, *fields) + data.ljust(self.fields[DATA_LEN], b"\0")


def clone_xml(xml: str, *, name: str, uuid: str, mac: str | None,
              dirs: Mapping[str, str]) -> str:
    """The template's domain XML for a clone: its `name`, `uuid`, `mac` (every NIC; None:
    keep) and every source path under a key of `dirs` moved under its value."""
    root = ET.fromstring(xml)
    root.attrib.pop("id", None)
    for tag, value in (("name", name), ("uuid", uuid)):
        el = root.find(tag)
        if el is None:
            raise InstanceError(f"the template's XML has no <{tag}>")
        el.text = value
    for src in root.iter("source"):
        for attr in ("path", "file"):
            path = src.get(attr)
            for old, new in dirs.items():
                if path and path.startswith(old.rstrip("/") + "/"):
                    src.set(attr, new.rstrip("/") + path[len(old.rstrip("/")):])
    for nic in root.iterfind("devices/interface"):
        if mac is not None and (m := nic.find("mac")) is not None:
            m.set("address", mac)
        if (s := nic.find("source")) is not None:
            s.attrib.pop("portid", None)  # the template's port on the network, not its
    return ET.tostring(root, encoding="unicode")


def restore_through_fifo(image: SaveImage, xml: str, fifo: Path,
                         restore: Callable[[str], None], timeout: float = 60.0) -> None:
    """Call `restore(path)` (virDomainRestoreFlags) on a FIFO fed with `image` as a save
    image of `xml`. The feeder gives up when the reader goes away (libvirt refused the
    image before reading it all) or never comes (it failed before opening the file)."""
    os.mkfifo(fifo, 0o600)
    head = image.header_for(xml)
    failed: list[BaseException] = []

    def feed() -> None:
        try:
            out = os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)
            try:
                _write_all(out, head)
                with image.path.open("rb") as src:
                    at, end = image.offset, os.fstat(src.fileno()).st_size
                    while at < end:
                        sent = os.sendfile(out, src.fileno(), at, end - at)
                        if sent == 0:
                            break
                        at += sent
            finally:
                os.close(out)
        except OSError as e:  # EPIPE: libvirt stopped reading; it reports why
            failed.append(e)

    feeder = threading.Thread(target=feed, name=f"restore {fifo.parent.name}", daemon=True)
    feeder.start()
    try:
        restore(str(fifo))
    finally:
        # A feeder still waiting to open the FIFO (libvirt never opened it) is let
        # through by a reader that opens and closes it, and then fails with EPIPE; again
        # until it is gone, in case it had not reached its open yet.
        deadline = time.monotonic() + timeout
        while feeder.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            feeder.join(0.05)
        fifo.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
