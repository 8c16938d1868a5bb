"""How experiments run: suites, one trial, Ray Tune sweeps, MLflow tracking, stress tests, the CLI."""
