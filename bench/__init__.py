"""bench: what things cost, measured.

`speed` times training and inference, `scaling` how a study's cost grows with images and tile
size, `load` puts an HTTP load on a running server; `server` starts and stops one for them and the tests.
"""
