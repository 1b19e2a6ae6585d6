"""Benchmarks, run by hand: ``python -m benchmarks [--json] [NAME ...]``.

Each module in this package that defines ``run(quick: bool) -> dict`` is one benchmark.
Every benchmark measures its own baseline (the ceiling it is judged against) in the same
run, because absolute times drift on shared machines. Results go to docs/performance.md.
"""
