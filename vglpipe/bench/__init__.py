"""Benchmarks: ``python -m vglpipe.bench <name>``.

Each benchmark is a module ``vglpipe.bench.<name>`` with ``run(args) -> dict`` that
prints human-readable lines and returns its figures; the runner prints the
figures last as one JSON line ``{"bench": "<name>", ...}``.
"""
