"""`python -m ila_agent` is the same program as the `ila-agent` console script."""

import sys

from ila_agent.cli import main

sys.exit(main())
