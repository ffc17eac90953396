"""circuit-lb: load-balancer services and targets, through IPVS or nftables."""
