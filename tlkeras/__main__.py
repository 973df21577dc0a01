"""`python -m tlkeras`: the command line, as the `tlkeras` script runs it."""

from tlkeras.cli import main

main()
