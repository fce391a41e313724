"""ablations.evaluate: commands that score a trained model outside a study's search.

`baseline` trains the TF tutorial's recipe for comparison, `scales` chooses the inference
scales (and neighbouring ground) on validation, `analysis` writes the error-analysis page.
"""
