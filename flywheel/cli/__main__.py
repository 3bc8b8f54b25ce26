"""`python -m flywheel.cli`: the same front door as the `flywheel` script (the services and tests
start it this way, with the interpreter they run on)."""

from flywheel.cli import main

main()
