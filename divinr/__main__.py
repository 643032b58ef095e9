"""``python -m divinr`` is the ``divinr`` command."""

import sys

from divinr.cli import main

sys.exit(main())
