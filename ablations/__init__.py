"""ablations: the study pipeline that trains and compares zoo decoder variants on image/mask folders.

`data` reads, checks, splits and augments; `studies`, `search`, `train`, `pipeline`, `report`
run and record the searches (`run`, `fit` are the CLIs); `evaluate` and `bench` hold the other commands.
"""
