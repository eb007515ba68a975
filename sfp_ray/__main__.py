"""``python -m sfp_ray`` is the ``sfp-ray`` command."""

import sys

from sfp_ray.cli import main

sys.exit(main())
