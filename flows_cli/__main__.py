"""``python -m flows_cli``: the ``flows`` command."""

import sys

from ._main import main

sys.exit(main())
