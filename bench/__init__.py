"""bench: what things cost, measured: training and inference (`speed`, `step`, `request`), how a
study's cost grows (`scaling`), serving runtimes (`runtimes`), outlines (`polygons`), HTTP load (`load`).

`server` starts and stops `python -m app` for them and the tests; `clients` sends many requests
at once (`load`, `runtimes`); `fuzz` makes the load test's odd requests.
"""
