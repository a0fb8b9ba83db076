"""Run the reliable-jobs command line: python -m reliable_jobs."""

import sys

from .cli import main

sys.exit(main())
