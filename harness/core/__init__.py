"""The bottom layer: errors, units, the workload image, probes, the host fingerprint, the
result records.

Nothing in here imports anything of the project above it (runtimes, the orchestration,
analysis or the CLI), so a backend and a child process can load it cheaply.
"""
