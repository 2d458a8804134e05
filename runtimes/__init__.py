"""Backends: one module per implementation of the Runtime protocol (base.py), found by
registry.py. Kept empty so that a child process can load one backend's modules (the ns
fork server loads runtimes.ns.process) without the registry or the harness."""
