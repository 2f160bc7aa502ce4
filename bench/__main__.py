"""`python -m bench`: see bench/cli.py (also `grpo bench`)."""
import sys

from bench.cli import main

sys.exit(main())
