"""`python -m harness.leaderboard {submit,submit-sweep,verify,render,ranks,check-pr,export,schema}`: the NeuronBench leaderboard.

- `submit CELL_DIR --name NAME [--submitter WHO]` turns a finished cell (summary.json +
  neurons.parquet) on a full frozen set into one entry, `leaderboard/entries/<NAME>.json`,
  after checking it is complete: every neuron of the set present once, explained or failed.
- `verify ENTRY...` re-simulates and re-scores the entry's explanations with a simulator and
  scorers rebuilt from this repository's conf/ (the entry names them; it may set only allowed
  parameters) and compares every per-neuron score, the controls, the stored test simulations and
  the summary with what the entry claims. The outcome is recorded in
  `leaderboard/verification.json` under the entry's file name, signed with $NEURONBENCH_VERIFY_KEY
  when it is set. Exit code: 0 verified, 1 failed, 3 pending (an API key or the maintainers' key is
  missing, or re-scoring would exceed `verify.budget_seconds`; `--budget-seconds N` raises it).
- `render` writes `leaderboard/README.md`, `leaderboard/index.html` and the page's `leaderboard/data/`,
  ranking verified entries only (it re-verifies every entry whose simulator runs locally, or takes
  the verdict this machine reached on the same file before).
- `ranks [--set NAME]` prints the rank uncertainty of the verified entries (`ranks`: the paired
  difference to the next entry, rank intervals, groups, the minimum detectable difference and the
  ranking's stability), the board's "Rank uncertainty" section, for every set or one.
- `check-pr BASE [--head REF]` checks a submission pull request (what
  `.github/workflows/leaderboard.yml` runs): it may only add entries (and the re-rendered board),
  every new entry must pass the board's checks and verify (or be pending on an API key), and the
  pull request's files are read from git as data, never run. Exit code 0 accepted, 1 refused.
- `export [--out FILE]` writes the ranked entries' per-neuron explanations and scores as one
  parquet table.
- `schema` prints the entry JSON Schema.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from harness.cli import exit_on_harness_error
from harness.errors import ConfigError, HarnessError
from harness.leaderboard.assess import assess
from harness.leaderboard.board import render
from harness.leaderboard.entry import cell_entry_name, submit
from harness.leaderboard.ranks import cross_sets, rankings, redrawn_pairs, render_section
from harness.leaderboard.schema import ENTRY_SCHEMA, entry_path, read_entry, safe_name
from harness.leaderboard.verification_records import load_records, record_verification
from harness.leaderboard.verify import Verification, verify
from harness.paths import file_sha256

EXIT_CODES = {"verified": 0, "failed": 1, "pending": 3}
SEVERITY = ("verified", "pending", "failed")  # the exit code is the worst outcome's


def verify_files(paths: list[Path], cfg: dict, record: bool) -> int:
    """Verify each entry file (a name means a file under the entries directory), print the report,
    record it for files in the entries directory; the exit code of the worst outcome."""
    if record:
        load_records(cfg)  # a malformed verification.json is refused before any verdict is printed
    worst = "verified"
    for path in paths:
        if not path.exists() and safe_name(str(path)):
            path = entry_path(str(path), cfg["entries_dir"])
        try:
            entry = read_entry(path, cfg)
            result = verify(entry, cfg, entry_sha256=file_sha256(path))
        except HarnessError as exc:
            result, entry = Verification(path.name, "failed", problems=[str(exc)]), None
        print(result.report())
        if record and entry is not None and path.resolve().parent == cfg["entries_dir"].resolve():
            record_verification(path, result, entry, cfg)
        worst = max(worst, result.status, key=SEVERITY.index)
    return EXIT_CODES[worst]


def rank_tables(cfg: dict, set_name: str | None) -> list[str]:
    """The board's "Rank uncertainty" section for the verified entries (on `set_name` only, if given)."""
    ranks = rankings([a.entry for a in assess(cfg) if a.status == "verified"])
    if not ranks:
        raise ConfigError(f"no verified entries under {cfg['entries_dir']}")
    across = cross_sets(ranks, redrawn_pairs(cfg))
    if set_name is not None:
        known = sorted({r.set_name for r in ranks})
        ranks, across = [r for r in ranks if r.set_name == set_name], [c for c in across if set_name in c.sets]
        if not ranks:
            raise ConfigError(f"no verified entry on set {set_name!r}; sets with verified entries: {known}")
    return render_section(ranks, across)


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    from harness.leaderboard.schema import load_config

    parser = argparse.ArgumentParser(prog="python -m harness.leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("--entries-dir", type=Path, default=None, help="default: leaderboard/entries")
    parser.add_argument("--sets-dir", type=Path, default=None, help="default: leaderboard/sets")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="write an entry from a finished cell directory")
    p.add_argument("cell_dir", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--submitter", default=os.environ.get("USER", "anonymous"))
    p.add_argument("--description", default=None)
    p.add_argument("--force", action="store_true", help="replace an entry of the same name")
    p.add_argument("--verify", action="store_true", help="verify the new entry right away")
    w = sub.add_parser("submit-sweep", help="submit every finished cell of a multirun directory, named after "
                                            "its explainer (and prompt)")
    w.add_argument("multirun_dir", type=Path)
    w.add_argument("--prefix", default="", help="prepended to every entry name")
    w.add_argument("--submitter", default=os.environ.get("USER", "anonymous"))
    w.add_argument("--force", action="store_true")
    w.add_argument("--verify", action="store_true", help="verify each new entry right away")
    v = sub.add_parser("verify", help="re-score entries and compare with their claims")
    v.add_argument("entries", nargs="+", type=Path, help="entry files (or names under the entries directory)")
    v.add_argument("--no-record", action="store_true", help="do not record the outcome in verification.json")
    v.add_argument("--budget-seconds", type=float, default=None,
                   help="verify entries whose estimated re-scoring time exceeds verify.budget_seconds (maintainers)")
    r = sub.add_parser("render", help="write leaderboard/README.md, index.html and data/")
    r.add_argument("--out", type=Path, default=None)
    k = sub.add_parser("ranks", help="print the rank uncertainty of the verified entries, per set and scorer")
    k.add_argument("--set", default=None, help="only this set (by name)")
    c = sub.add_parser("check-pr", help="check a submission pull request: only new entries, each verified")
    c.add_argument("base", help="the base ref (e.g. origin/main); this checkout's code does the checking")
    c.add_argument("--head", default="HEAD", help="the pull request's commit (read as data only)")
    x = sub.add_parser("export", help="write the ranked entries' per-neuron explanations and scores as parquet")
    x.add_argument("--out", type=Path, default=Path("leaderboard-export.parquet"))
    x.add_argument("--include-unverified", action="store_true", help="also failed and pending entries "
                                                                     "(see the status column)")
    sub.add_parser("schema", help="print the entry JSON Schema")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cfg = load_config(entries_dir=args.entries_dir, sets_dir=args.sets_dir)

    if args.command == "schema":
        print(json.dumps(ENTRY_SCHEMA, indent=1))
        return 0
    if args.command == "submit":
        path = submit(args.cell_dir, args.name, args.submitter, cfg, args.force, args.description)
        print(f"wrote {path}")
        return verify_files([path], cfg, True) if args.verify else 0
    if args.command == "submit-sweep":
        from harness.collect import find_cells
        written = []
        for cell in find_cells(args.multirun_dir):
            name = args.prefix + cell_entry_name(json.loads((cell / "summary.json").read_text())["config"])
            written.append(submit(cell, name, args.submitter, cfg, args.force))
            print(f"wrote {written[-1]}")
        return verify_files(written, cfg, True) if args.verify else 0
    if args.command == "verify":
        if args.budget_seconds is not None:
            cfg["verify"] = {**cfg["verify"], "budget_seconds": args.budget_seconds}
        return verify_files(args.entries, cfg, not args.no_record)
    if args.command == "check-pr":
        from harness.leaderboard.check_pr import check_pr
        result = check_pr(args.base, args.head, cfg)
        print(result.report())
        return 0 if result.ok else 1
    if args.command == "export":
        from harness.leaderboard.export import export
        out, n = export(cfg, args.out, args.include_unverified)
        print(f"wrote {out} ({n} rows)")
        return 0
    if args.command == "ranks":
        print("\n".join(rank_tables(cfg, args.set)))
        return 0
    if args.command == "render":
        md, page = render(cfg, args.out)
        print(f"wrote {md} and {page}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
