"""`python -m flannel_ext` is the `flannel-ext` command."""
import sys

from flannel_ext.cli import main

sys.exit(main())
