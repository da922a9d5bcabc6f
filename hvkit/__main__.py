"""``python -m hvkit`` (what ``torchrun -m hvkit run …`` executes)."""

from hvkit.cli import main

main()
