"""What the demo and the tests need and production never does: the simulated support desk's two
tasks, the ticket router (`world`) and the tool-calling agent (`agent`), and a tiny from-scratch
model built locally (`tiny`)."""
