"""Disk figures of directories, as `du -sb` gives them.

`du -sb` (GNU du --summarize --bytes) sums the apparent size (st_size) of every entry of
the tree, directories and symlinks included, the top directory too, and counts a file
with several hard links once. Docker and Podman size image layers the same way (apparent
bytes), so the directory-based backends are compared with them like for like; allocated
blocks (what plain `du -s` says) differ by filesystem and are left to VM disk images,
where `qemu-img info` reports them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def du_bytes(path: str | Path) -> int:
    """Bytes of the tree at `path` as `du -sb` counts them; 0 if it does not exist."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0
    seen: set[tuple[int, int]] = set()
    total = top.st_size
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # removed while we walk
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_size
    return total
