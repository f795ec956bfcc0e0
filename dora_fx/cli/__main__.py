"""``python -m dora_fx.cli``: the ``dora-fx`` command."""

import sys

from .main import main

sys.exit(main())
