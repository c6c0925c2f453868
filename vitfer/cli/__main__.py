"""``python -m vitfer.cli``."""
import sys

from vitfer.cli import main

sys.exit(main())
