"""`python -m meshtrain.tools COMMAND ...`: the `meshtrain` console script without the script."""

import sys

from meshtrain.tools.cli import main

sys.exit(main())
