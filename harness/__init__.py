"""cvbench: the same workload under several isolation backends, measured the same way."""

__version__ = "0.1.0"
