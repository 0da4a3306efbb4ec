"""``python -m offsetlab`` (and ``accelerate launch -m offsetlab train ...``)."""

import sys

from .frontends.cli import main

sys.exit(main())
