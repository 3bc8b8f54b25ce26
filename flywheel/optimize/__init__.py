"""The 3D optimizer's data: the serving options of a task's production model (`options`)."""
