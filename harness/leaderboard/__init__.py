"""The NeuronBench leaderboard: entries (`entry`), their schema and safe reading (`schema`, with the
checks a schema cannot express in `checks`), verification by re-scoring (`verify`), and the board:
which entries are ranked (`assess`), what it shows of sets and entries (`views`), its rows (`rows`),
README.md (`markdown`), the page's data (`page`), all written by `board.render`. The command line is
`python -m harness.leaderboard` (`__main__`)."""

from harness.leaderboard.assess import Assessed, assess
from harness.leaderboard.board import render
from harness.leaderboard.entry import (build_entry, cell_entry_name, clean_params, dumps_entry, fingerprint,
                                       submit)
from harness.leaderboard.markdown import TRUST_MODEL
from harness.leaderboard.page import page_data
from harness.leaderboard.rows import board_rows
from harness.leaderboard.schema import (ENTRY_SCHEMA, SCHEMA_VERSION, EntryError, entry_path, known_set,
                                        load_config, parse_entry_text, read_entry, safe_name, validate_entry)
from harness.leaderboard.verification_records import record_verification, trusted_record
from harness.leaderboard.verify import Verification, resolve_components, verify
from harness.paths import file_sha256

__all__ = ["TRUST_MODEL", "Assessed", "assess", "board_rows", "page_data", "render", "build_entry", "cell_entry_name",
           "clean_params", "dumps_entry", "fingerprint", "submit", "ENTRY_SCHEMA", "SCHEMA_VERSION", "EntryError",
           "entry_path", "known_set", "load_config", "parse_entry_text", "read_entry", "safe_name", "validate_entry",
           "Verification", "file_sha256", "record_verification", "resolve_components", "trusted_record", "verify"]
