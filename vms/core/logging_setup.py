"""Log format shared by every process; credentials in URLs are masked by the code that logs them."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
