"""Jobs and runs: the stage registry (stages), the job queue and its workers (jobs), and what
the Runs page does with finished runs (runs)."""
