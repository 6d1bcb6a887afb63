"""`python -m keelnet.cli`: the same as the `keelnet` command."""

import sys

from keelnet.cli import main

sys.exit(main())
