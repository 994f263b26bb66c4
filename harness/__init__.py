"""NeuronBench: benchmark automated neuron interpretability (explain → simulate → score)."""

__version__ = "0.1.0"
