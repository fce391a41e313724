"""python -m ablations.fit: the old name of the main job, kept so earlier commands still work.

The fit is `python -m training.fit` (training/fit.py); this only forwards to it.
"""

import sys

from training.fit import main

if __name__ == "__main__":
    sys.exit(main())
