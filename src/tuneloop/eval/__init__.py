"""Evaluation: suites, generation backends, metrics with confidence intervals, reports and gates."""
