"""circuit-net: CNI networks for runc containers, run with the real CNI plugins."""
