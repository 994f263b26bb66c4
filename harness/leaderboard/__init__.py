"""The NeuronBench leaderboard: entries (`entry`), their schema and safe reading (`schema`),
verification by re-scoring (`verify`), and the rendered board (`board`). The command line is
`python -m harness.leaderboard` (`__main__`)."""

from harness.leaderboard.board import TRUST_MODEL, Assessed, assess, board_rows, page_data, render
from harness.leaderboard.entry import (build_entry, cell_entry_name, clean_params, dumps_entry, fingerprint,
                                       submit)
from harness.leaderboard.schema import (ENTRY_SCHEMA, SCHEMA_VERSION, EntryError, entry_path, known_set,
                                        load_config, parse_entry_text, read_entry, safe_name, validate_entry)
from harness.leaderboard.verify import (Verification, file_sha256, record_verification, resolve_components,
                                        trusted_record, verify)

__all__ = ["TRUST_MODEL", "Assessed", "assess", "board_rows", "page_data", "render", "build_entry", "cell_entry_name",
           "clean_params", "dumps_entry", "fingerprint", "submit", "ENTRY_SCHEMA", "SCHEMA_VERSION", "EntryError",
           "entry_path", "known_set", "load_config", "parse_entry_text", "read_entry", "safe_name", "validate_entry",
           "Verification", "file_sha256", "record_verification", "resolve_components", "trusted_record", "verify"]
