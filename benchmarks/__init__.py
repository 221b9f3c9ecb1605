"""Speed, memory and accuracy measurements of bertclf; run each as a module from the repository root,
e.g. `python -m benchmarks.training.train_speed --help`. Results, with the commands that made them: RESULTS.md."""
