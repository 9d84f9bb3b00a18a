"""What an ablation reports: statistics over seeds, robustness, modality
contributions, figures and the Markdown report (used by experiments.ablate).

  stats       mean ± t-CI, Pareto front, robustness areas, Shapley values
  evaluation  a trained run's primary metric under test-time corruptions
  timing      wall time of one train step
  aggregate   per-seed records -> per-cell statistics, results.csv rows
  plots       the PNG figures (matplotlib, Agg)
  document    results.md, robustness.md, contributions.md, report.md
"""
