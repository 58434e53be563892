"""`python -m nayer_jax ...` is the `nayer-jax` command (nayer_jax/cli.py)."""

import sys

from nayer_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
