"""The metric sanity check, by concern (`harness.metric_sanity` is the entry point that runs them):

- `perturb`: the label perturbations, of the oracle simulation (missing and extra labels on tokens)
  and of the explanation (missing and extra labels in a true label list)
- `report`: the Markdown report, its tables and the plot
"""
