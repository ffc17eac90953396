"""circuit-hook: runc hooks that attach containers on start and detach them on stop."""
