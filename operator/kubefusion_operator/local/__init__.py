"""Single-machine mode: run a FusionRun with local processes, no cluster."""
