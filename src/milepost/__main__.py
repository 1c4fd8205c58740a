"""`python -m milepost` is the `milepost` command."""

from milepost.cli import main

main()
