"""Tables and a plot of corruption results: for one run, or aggregated over a sweep's jobs.

`python -m harness.corrupt.report SWEEP_DIR [SWEEP_DIR ...] [--out DIR]` gathers every finished job
of one or more sweeps (each numbered directory's results.parquet; a job without summary.json is
named and left out) and writes `results.parquet`, `report.md` and `corruption.png` into the
(first) sweep directory, or --out. A
`python -m harness.corrupt -m ...` sweep does this itself when it ends (`AggregateSweep`, a Hydra
callback in conf/corrupt.yaml). The sweep-level report adds "first layer that gets it": over the
`skip_last` jobs, the smallest number of kept layers at which each prompt's clean top-1 token is
the corrupted model's top-1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback

from harness.errors import ConfigError
from harness.formatting import fmt
from harness.rundir import write_atomic, write_figure
from harness.text import for_markdown

log = logging.getLogger(__name__)

SUMMARY_MEASURES = ("loss", "loss_delta", "kl")


def _tokens(pairs: list[list[Any]], signed: bool = False) -> str:
    """Tokens as quoted Python literals (a leading space or a newline stays visible), made inert Markdown."""
    if signed:  # changes: only those visible at 3 decimals
        return ", ".join(f"{for_markdown(repr(t), 30)} {v:+.3f}" for t, v in pairs if abs(v) >= 5e-4) or "none"
    return ", ".join(f"{for_markdown(repr(t), 30)} {v:.3f}" for t, v in pairs)


def _order(df: pd.DataFrame) -> list[str]:
    """Corruptions in table order: by kind as first seen, then layers run, most first."""
    first = df.drop_duplicates("corruption")
    kinds = {k: i for i, k in enumerate(first["kind"].drop_duplicates())}
    first = first.assign(_k=first["kind"].map(kinds)).sort_values(["_k", "layers_run"], ascending=[True, False],
                                                                  kind="stable")
    return first["corruption"].tolist()


def summary_table(df: pd.DataFrame) -> str:
    lines = ["| corruption | layers run | loss (nats/token) [95% CI] | Δloss vs clean [95% CI] | "
             "KL(clean ‖ corrupted) [95% CI] | prompts keeping the clean top-1 |", "|---|---|---|---|---|---|"]
    for name in _order(df):
        rows = df[df["corruption"] == name]
        by = {r.measure: r for r in rows[rows["prompt"].isna()].itertuples()}
        readout = rows[rows["measure"] == "readout"]
        cells = [f"{fmt(by[m].value, '.3f')} [{fmt(by[m].ci_lo, '.3f')}, {fmt(by[m].ci_hi, '.3f')}]"
                 for m in SUMMARY_MEASURES]
        kept = f"{int((readout['rank'] == 1).sum())}/{len(readout)}"
        lines.append(f"| `{name}` | {rows['layers_run'].iloc[0]} | " + " | ".join(cells) + f" | {kept} |")
    return "\n".join(lines)


def first_layer_table(df: pd.DataFrame) -> str | None:
    """Over the skip_last runs: per prompt, the clean top-1 token's rank at each kept depth and the
    smallest kept depth at which it is the top-1."""
    sl = df[(df["kind"] == "skip_last") & (df["measure"] == "readout")]
    depths = sorted(sl["layers_run"].unique())
    if len(depths) < 2:
        return None
    lines = ["| prompt | clean top-1 | first kept depth where it is top-1 | " + " | ".join(
        f"rank @ {d}" for d in depths) + " |", "|---|---|---|" + "---|" * len(depths)]
    for prompt, rows in sl.groupby("prompt", sort=False):
        rank = {int(r.layers_run): int(r.rank) for r in rows.itertuples()}
        top1 = json.loads(rows["text"].iloc[0])["clean_top1"]
        first = next((d for d in depths if rank.get(d) == 1), None)
        lines.append(f"| {for_markdown(prompt, 40)} | {for_markdown(repr(top1), 30)} | "
                     f"{first if first is not None else 'never'} | " + " | ".join(str(rank.get(d, '')) for d in depths)
                     + " |")
    return "\n".join(lines)


def readout_tables(df: pd.DataFrame) -> list[str]:
    parts = []
    order = _order(df)
    ro = df[df["measure"] == "readout"]
    for prompt in ro["prompt"].drop_duplicates():
        rows = ro[ro["prompt"] == prompt].set_index("corruption")
        clean = json.loads(rows["text"].iloc[0])
        parts += [f"**{for_markdown(prompt.strip(), 120)}**: clean top tokens {_tokens(clean['clean_top'])}", "",
                  "| corruption | p(clean top-1) | rank | top tokens | gained most | lost most |",
                  "|---|---|---|---|---|---|"]
        for name in (n for n in order if n in rows.index):
            r = rows.loc[name]
            ro_ = json.loads(r["text"])
            parts.append(f"| `{name}` | {r['value']:.3g} | {int(r['rank'])} | {_tokens(ro_['top'][:3])} | "
                         f"{_tokens(ro_['gained'][:3], True)} | {_tokens(ro_['lost'][:3], True)} |")
        parts.append("")
    return parts


def continuation_tables(df: pd.DataFrame) -> list[str]:
    parts = []
    order = _order(df)
    cont = df[df["measure"] == "continuation"]
    clean = df[df["measure"] == "continuation_clean"].drop_duplicates("prompt").set_index("prompt")["text"]
    for prompt in cont["prompt"].drop_duplicates():
        rows = cont[cont["prompt"] == prompt].set_index("corruption")["text"]
        parts += [f"**{for_markdown(prompt.strip(), 120)}**", "", "| model | greedy continuation |", "|---|---|",
                  f"| clean | {for_markdown(clean.get(prompt, ''), 120)} |"]
        parts += [f"| `{name}` | {for_markdown(rows[name], 120)} |" for name in order if name in rows.index]
        parts.append("")
    return parts


def plot(df: pd.DataFrame, path: Path) -> None:
    """Loss and KL against the number of layers run, a line per corruption kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = df[df["prompt"].isna()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    clean = head.loc[head["measure"] == "loss_clean", "value"].mean()
    n_layers = int(df["n_layers"].iloc[0])
    for ax, measure_name, title in ((axes[0], "loss", "loss on held-out Brown windows (nats/token)"),
                                    (axes[1], "kl", "KL(clean ‖ corrupted) (nats/token)")):
        for i, (kind, rows) in enumerate(head[head["measure"] == measure_name].groupby("kind", sort=False)):
            rows = rows.sort_values("layers_run")
            ax.errorbar(rows["layers_run"], rows["value"], yerr=[rows["value"] - rows["ci_lo"], rows["ci_hi"] - rows["value"]],
                        marker="o", ms=4, capsize=3, color=f"C{i}", label=kind)
        if measure_name == "loss":
            ax.axhline(clean, color="k", ls=":", lw=1, label="clean model")
        ax.axvline(n_layers, color="grey", lw=0.5)
        ax.set_xlabel(f"layers run (the clean model runs {n_layers})")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Corrupting the decoder layers of {df['subject'].iloc[0]}")
    fig.tight_layout()
    write_figure(path, fig, dpi=110)
    plt.close(fig)


def report_markdown(df: pd.DataFrame, notes: list[str] | None = None) -> str:
    clean = df[df["measure"] == "loss_clean"]["value"].mean()
    parts = ["# Corruption experiments", "",
             f"{df['corruption'].nunique()} corruption(s) of a {int(df['n_layers'].iloc[0])}-layer subject, each "
             f"measured against the clean model on the same inputs. Clean loss {clean:.3f} nats/token; CIs are "
             "seeded bootstrap 95% intervals over held-out windows. *Layers run* counts layer applications "
             "(a repeated layer counts each time). Every row's numbers are in `results.parquet`.", ""]
    parts += [f"- {n}" for n in notes or []] + ([""] if notes else [])
    parts += ["## Loss and KL", "", summary_table(df), "", "![loss and KL against layers run](corruption.png)", ""]
    first = first_layer_table(df)
    if first:
        parts += ["## First layer that gets it", "",
                  "Over the `skip_last` runs: the rank of the clean model's top-1 next token under each kept depth "
                  "(1 = still the top token), and the smallest kept depth at which it is the top-1.", "", first, ""]
    parts += ["## Next-token readout", "", "Probabilities of the corrupted model; *gained*/*lost*: the largest "
              "changes of probability against the clean model.", ""] + readout_tables(df)
    parts += ["## Greedy continuations", ""] + continuation_tables(df)
    return "\n".join(parts)


def write_report(df: pd.DataFrame, out: Path) -> None:
    write_atomic(out / "report.md", report_markdown(df))
    plot(df, out / "corruption.png")


def gather(sweep_dirs: list[Path]) -> tuple[pd.DataFrame, list[str]]:
    """Every finished job's rows under the sweep directories, and the job directories left out."""
    frames, missing = [], []
    for sweep_dir in sweep_dirs:
        if not sweep_dir.is_dir():
            raise ConfigError(f"{sweep_dir} is not a directory; give a sweep's hydra.sweep.dir")
        jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        for job in jobs:
            if (job / "summary.json").is_file() and (job / "results.parquet").is_file():
                frames.append(pd.read_parquet(job / "results.parquet").assign(job=str(job)))
            else:
                missing.append(str(job))
    if not frames:
        raise ConfigError(f"{', '.join(map(str, sweep_dirs))}: no finished corruption run (numbered directories "
                          "with summary.json)")
    return pd.concat(frames, ignore_index=True), missing


def aggregate(sweep_dirs: list[Path], out: Path | None = None) -> Path:
    df, missing = gather(sweep_dirs)
    out = out or sweep_dirs[0]
    write_atomic(out / "results.parquet", lambda f: df.to_parquet(f, index=False))
    notes = [f"unfinished job(s) left out: {', '.join(missing)} (re-run the sweep to finish them)"] if missing else []
    clean = df.loc[df["measure"] == "loss_clean", "value"]
    if clean.max() - clean.min() > 1e-4 * max(1.0, abs(clean.mean())):
        notes.append("the runs were measured on different inputs (their clean losses differ: "
                     f"{clean.min():.4f}..{clean.max():.4f}); compare them with care")
    write_atomic(out / "report.md", report_markdown(df, notes))
    plot(df, out / "corruption.png")
    log.info("aggregated %d run(s) into %s", df["corruption"].nunique(), out)
    return out


class AggregateSweep(Callback):
    """Hydra callback: aggregate a `python -m harness.corrupt -m` sweep when it ends."""

    def on_multirun_end(self, config, **kwargs) -> None:  # noqa: ARG002
        out = aggregate([Path(config.hydra.sweep.dir)])
        print(f"sweep report: {out / 'report.md'} and {out / 'corruption.png'}")


def main(argv: list[str] | None = None) -> None:
    from harness.cli import exit_on_harness_error

    parser = argparse.ArgumentParser(prog="python -m harness.corrupt.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dirs", type=Path, nargs="+", metavar="SWEEP_DIR")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of into the sweep directory")
    args = parser.parse_args(argv)
    out = exit_on_harness_error(aggregate)(args.sweep_dirs, args.out)
    print(f"wrote {out / 'results.parquet'}, {out / 'report.md'} and {out / 'corruption.png'}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    main()
