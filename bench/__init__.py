"""tlkeras benchmark suite: `python -m bench.run [--quick] [--only NAME,...] [--out bench/results]`.

Each benchmark module exposes `NAME`, `TARGET` (the claim it checks) and `run(quick, workdir) -> dict`.
Timings on a shared machine are reported as ratios of A and B measured interleaved in one run.
"""
