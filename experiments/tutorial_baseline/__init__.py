"""The TensorFlow tutorial's recipe trained as the studies train, and the per-city table that sets the
served recipe beside it: the comparison the results rest on."""
