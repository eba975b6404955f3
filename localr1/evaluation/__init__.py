"""`localr1 eval`: suites of problems with known answers (suites), runs saved sample by sample and resumed
(run), what a run says and two runs compared (report), and the accuracy curve (plot)."""
