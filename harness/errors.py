"""One exception hierarchy: every message says what was wrong and what to do about it."""


class HarnessError(Exception):
    """Base class of every error the harness raises on purpose."""


class ConfigError(HarnessError):
    """A configuration value is unknown or out of range."""


class AssetError(HarnessError):
    """A model file, corpus package or other asset is missing or corrupt."""


class CorpusError(HarnessError):
    """The corpus could not be read or is empty."""


class SetIntegrityError(HarnessError):
    """A frozen neuron set is missing, incomplete or fails its content hash."""


class FidelityError(HarnessError):
    """Hooked activations do not match a recomputation from the layer's own weights."""


class OutputBusyError(HarnessError):
    """Another run is writing the same output directory."""


class LLMError(HarnessError):
    """A model call failed for good (after retries), or its backend is misconfigured."""


class TransientLLMError(LLMError):
    """A model call failed, also after retries, for a reason that may pass: no connection, a timeout,
    HTTP 408/409/429 or 5xx. Not a property of the neuron: the cell stops incomplete."""


class CellFailedError(HarnessError):
    """A cell did not produce a result (an API outage, too many failed neurons); it wrote no
    summary.json, so a re-run or a resumed sweep runs it again."""


class ExplanationError(HarnessError):
    """An explainer's output was empty or malformed, also after one retry."""
