"""circuit-cluster: networks, addresses and services shared through etcd."""
