"""Peers for the end-to-end benchmark (bench/bench_e2e.py): RQ and huey running `true` per job."""
