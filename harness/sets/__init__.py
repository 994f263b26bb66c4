"""Building a frozen neuron set, by concern (`harness.build_set` is the entry point that runs them):

- `windows`: the corpus cut into windows and split into the explain and scoring pools
- `accumulators`: exact, order-free per-neuron sums and running top-k windows
- `pass1`: the streaming pass over every neuron, by consecutive ranges of whole batches
- `setup`: what every build job prepares first (subject, windows, samples, shard ranges)
- `shards`: pass 1 as resumable shard files, merged in window order
- `draw`: the alive rule and the seeded neuron draw (the GELU check applies the same rule)
- `plan`: each chosen neuron's records per split, and pass 2 for the sampled ones
- `tables`: the set's tables and manifest
"""
