"""circuit-lb: IPVS load-balancer services and targets."""
