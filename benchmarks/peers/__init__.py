"""Models and peer methods for benchmarks/full_vs_peers.py."""
