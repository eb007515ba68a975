"""``python -m sfp_ray.cli`` is the ``sfp-ray`` command too."""

import sys

from sfp_ray.cli.commands import main

sys.exit(main())
