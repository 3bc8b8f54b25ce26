"""What the demo and the tests need and production never does: the simulated support desk
(`world`) and a tiny from-scratch model built locally (`tiny`)."""
