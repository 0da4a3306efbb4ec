"""``python -m offsetlab`` (and ``accelerate launch -m offsetlab train ...``)."""

import sys

from .cli import main

sys.exit(main())
