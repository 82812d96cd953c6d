"""Command-line glue shared by the experiment mains."""
from __future__ import annotations

import re
import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a bad flag or --config (e.g. an unknown preset) as one line, not a traceback.

    Use as `app.run(main, flags_parser=parse_flags)`.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        last = str(error).strip().splitlines()[-1].strip()
        sys.exit(f"error: {re.sub(r'^[A-Za-z]*Error: ', '', last)}")
