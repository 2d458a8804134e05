"""Building what a VM guest boots from the workload image (used by runtimes/libvirt.py).

kernel.py: the guest kernel (Debian's linux-image-amd64) and its uncompressed vmlinux,
which QEMU enters through PVH: no decompression inside the guest, about twice as fast a
boot under TCG. initramfs.py: the image's rootfs tar plus the kernel modules the guest
needs, as one newc cpio. disk.py: the same rootfs as an ext4 raw disk and a qcow2 disk.
domain.py: the libvirt domain XML (pure data in, text out).

Everything is cached under the cvbench cache by (image digest, guest kernel version).
"""
