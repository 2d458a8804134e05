"""Probes: how cvbench reads time, memory, disk and I/O figures from the host."""
