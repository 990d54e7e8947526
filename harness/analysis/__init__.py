"""Analysis of finished records: uncertainty, paired comparisons, Pareto fronts, per-layer diagnostics."""
