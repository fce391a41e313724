"""ablations: the study pipeline that trains and compares zoo decoder variants on image/mask folders.

`data` reads, checks, splits and augments; `studies`, `search`, `train`, `pipeline`, `report`
run and record the searches (`run`, `fit` are the CLIs); `evaluate` and `bench` hold the other commands.
"""

from zoo import allocator as _allocator

# Before TensorFlow starts its threads: freed tensors' memory is reused, not faulted in
# afresh at every step (zoo.allocator; a training step's kernel time falls from a third of
# its CPU time to under a tenth).
_allocator.one_arena()
_allocator.keep_freed_memory()
