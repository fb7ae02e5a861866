"""The search loop, run folders, checkpoints and profiling."""
