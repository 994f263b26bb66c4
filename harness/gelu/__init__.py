"""The GELU-variant check, by concern (`harness.gelu_check` is the entry point that runs them):

- `variants`: the GELU variants and the hooks that swap one into a subject's MLPs
- `histogram`: streaming |Δ| quantiles in log-spaced bins
- `capture`: the own run (pass 1) and each variant, locally and propagated (pass 2)
- `stability`: top-k windows, alive neurons and the frozen-set draw under a variant
- `scores`: the change of each scorer's headline when the test split is re-recorded
- `report`: the Markdown report, tables and plot
"""
