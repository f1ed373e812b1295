"""Runs: the store (one database), run folders, the queue, the worker processes and a run's lifecycle.

store, paths, queue and lifecycle import nothing of training; only execute (what a worker's child runs) does."""
