"""circuit-qos: rate, ceiling and delay for circuit networks and container interfaces."""
