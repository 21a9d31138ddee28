"""``python -m cfattr_monai``: the ``cfattr`` command line."""

import sys

from cfattr_monai.cli import main

sys.exit(main())
