"""How much a new city gains from adapting the served model to it: the curve by K, per city."""
