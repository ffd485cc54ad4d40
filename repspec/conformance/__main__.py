"""``python -m repspec.conformance --impl package.module:Adapter`` (see docs/porting.md)."""

import sys

from .runner import main

sys.exit(main())
