"""The simulators, one module per concern: `rules` (no model), `readout` (the value readout and the
prompt shared by the logprob simulators), `local` (an in-process model's logits), `served` (a served
model's prompt logprobs) and `chat` (chat APIs). `harness.simulate` is the face: the `Simulator`
protocol, the registry of config names and `make_simulator`."""
