"""`python -m lsmvec.tools` runs the lsmvec command."""
import sys

from .cli import main

sys.exit(main())
