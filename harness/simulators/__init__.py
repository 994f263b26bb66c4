"""The simulators, one module per concern: `lexical` (no model), `readout` (the value readout and the
prompt shared by the logprob simulators), `local` (an in-process model's logits), `served` (a served
model's prompt logprobs) and `chat` (chat APIs). `harness.simulate` is the face: the `Simulator`
protocol and `make_simulator`; their names and parameters are components (harness/components.py)."""
