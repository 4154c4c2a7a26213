"""``python -m continual``: the command line, as torchrun starts it (``torchrun ... -m continual run CONFIG``)."""
import sys

from continual.cli import main

sys.exit(main())
