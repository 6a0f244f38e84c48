"""`python -m pledgewatch` is the `pledgewatch` console command."""
import sys

from pledgewatch.cli import main

sys.exit(main())
