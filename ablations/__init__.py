"""ablations: train and compare zoo decoder variants on image/mask folders.

`ablations.data` reads, checks, splits and augments the data; it imports no
deep-learning code at import time, so reports and tests can use it cheaply.
"""
