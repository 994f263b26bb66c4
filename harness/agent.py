"""`python -m harness.agent [overrides]`: an LLM runs corruption experiments on the subject.

Each step the agent's LLM (any `conf/explainer/` LLM backend) gets the subject's description, the
corruption kinds with their parameters, the results so far and its own notes, and answers with one
JSON action: `{"action": "run", "corruption": {...}, "hypothesis": "..."}` or
`{"action": "finish", "summary": "..."}`. An action is data, never code or a path: it is parsed
with bounded size and validated against the corruption schema (`harness.corrupt.corruption_spec`);
an invalid one is a step that tells the agent why on the next turn, and is counted. A valid run is
measured like `python -m harness.corrupt` does, its result table shown, and the agent asked for a
note relating it to its hypothesis. Model text the run keeps as data (a hypothesis, a summary, a note)
must pass `harness.text.text_problem` (no lone surrogate, control or bidi character): a hypothesis or
summary that does not makes the action invalid, a note that does not is refused. The raw answer and
error messages are kept as a record: cut to `max_answer_chars`, written as ASCII JSON (so no text can
break the write) and escaped wherever they are shown.

Budgets (`budget.*`): steps, USD (the ledger, over every call of the run) and wall time; checked
before each step, so a run stops cleanly between steps. A paid model without a price in
`conf/pricing/` is refused before the first call (its cost would read $0). Every finished step is
appended as one JSON line to `steps.jsonl` (flushed and fsynced), so a killed run loses at most the
step in progress: a re-run with the same output directory continues after the last complete step,
and the LLM calls it repeats are answered by the call cache. A step cut short by an outage (a
TransientLLMError) stops the run after appending an `interrupted` line with what its answered calls
cost, which the re-run's cached answers no longer do. Outputs: `steps.jsonl`, `summary.json` and
`report.md`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness import __version__
from harness.cli import exit_on_harness_error, hydra_output_dir
from harness.corrupt import check_measure, corruption_spec, make_probe, measure, schema_text
from harness.errors import ConfigError, LLMError, TransientLLMError
from harness.formatting import fmt
from harness.llm import LLM, make_backend
from harness.llm.cache import CallCache, Ledger
from harness.redact import redact
from harness.rundir import (check_same_config, lock_output_dir, mark_done, run_options, saved_config, write_atomic,
                            write_json)
from harness.subject import Subject, load_subject
from harness.text import for_markdown, for_terminal, text_problem
from harness.validation import option_problems

log = logging.getLogger(__name__)

# Options a resumed run may change (how far it may go, not what it does).
RUNTIME_ONLY = ("budget", "call_cache")
# Options the agent reads; their rules (and those of every other option) are harness.validation.RULES.
AGENT_OPTIONS = ("budget.max_steps", "budget.max_cost_usd", "budget.max_wall_seconds", "max_answer_chars",
                 "max_note_chars", "min_experiments", "sampling.temperature", "sampling.max_tokens")
ACTION_PROMPT = "Your next action (one JSON object):"

SYSTEM = """You are a researcher running experiments on a language model to find out which of its decoder layers it needs, and for what.

Subject: {subject}.
An experiment corrupts the decoder layers and measures against the clean model: the loss on held-out English text (nats/token), the KL divergence of next-token distributions, on how many test prompts the clean model's top next token stays on top, and greedy continuations of the prompts.
Corruption kinds and their parameters (layer indices 0..{last}):
{schema}

Answer with exactly one JSON object and nothing else. When you have learned enough, answer
{{"action": "finish", "summary": "what the experiments show about the layers"}}
Otherwise run an experiment:
{{"action": "run", "corruption": {{"kind": "skip_last", "n": 5}}, "hypothesis": "what you expect and why"}}"""

# One worked exchange before the real turn: it shows the answer format by example (a 135M model
# answers in JSON only after seeing one).
EXAMPLE = [{"role": "user", "content": "Results so far:\n(no experiment yet)\n\nYour notes so far:\n(none yet)\n\n"
                                       f"Steps left: 6. {ACTION_PROMPT}"},
           {"role": "assistant", "content": '{"action": "run", "corruption": {"kind": "skip_first", "n": 3}, '
                                            '"hypothesis": "the first layers build token features that every later '
                                            'layer needs, so the loss rises sharply"}'}]


# --- Actions ----------------------------------------------------------------------------------

def parse_action(text: str, n_layers: int, max_chars: int) -> tuple[dict[str, Any] | None, str | None]:
    """(action, None) for a valid answer, else (None, why). The first JSON object in the answer
    (a code fence or words around it are allowed) must be a run with a valid corruption or a
    finish with a summary; a summary or hypothesis must be storable text (`text_problem`)."""
    if len(text) > max_chars:
        return None, f"the answer is {len(text)} characters long; at most {max_chars} are read"
    start = text.find("{")
    if start < 0:
        return None, "no JSON object found; answer with one JSON object"
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except (ValueError, RecursionError) as exc:
        return None, f"the JSON object does not parse ({str(exc)[:120]})"
    if not isinstance(obj, dict) or obj.get("action") not in ("run", "finish"):
        return None, 'the object needs "action": "run" or "action": "finish"'
    if obj["action"] == "finish":
        summary = obj.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            return None, 'a finish needs a non-empty "summary" string'
        if problem := text_problem(summary, allow_newlines=True):
            return None, f'the "summary" holds {problem}; write plain text'
        return {"action": "finish", "summary": summary.strip()[:max_chars]}, None
    hypothesis = obj.get("hypothesis")
    if isinstance(hypothesis, str) and (problem := text_problem(hypothesis, allow_newlines=True)):
        return None, f'the "hypothesis" holds {problem}; write plain text'
    try:
        spec = corruption_spec(obj.get("corruption"), n_layers)
    except ConfigError as exc:
        return None, str(exc)
    return {"action": "run", "corruption": {"kind": spec.kind, **spec.params},
            "hypothesis": hypothesis.strip()[:1000] if isinstance(hypothesis, str) else ""}, None


def digest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the agent and the log keep of an experiment's rows."""
    df = pd.DataFrame(rows)
    head = {r.measure: r for r in df[df["prompt"].isna()].itertuples()}
    readout = df[df["measure"] == "readout"]
    return {"corruption": df["corruption"].iloc[0], "layers_run": int(df["layers_run"].iloc[0]),
            **{m: head[m].value for m in ("loss_clean", "loss", "loss_delta", "kl")},
            **{f"{m}_ci": [head[m].ci_lo, head[m].ci_hi] for m in ("loss", "kl")},
            "top1_kept": f"{int((readout['rank'] == 1).sum())}/{len(readout)}",
            "continuations": df[df["measure"] == "continuation"][["prompt", "text"]].values.tolist()}


def results_text(steps: list[dict[str, Any]]) -> str:
    done = [s["result"] for s in steps if s.get("result")]
    if not done:
        return "(no experiment yet)"
    lines = [f"clean model: loss {done[0]['loss_clean']:.3f} nats/token",
             "| corruption | layers run | loss | loss change | KL | prompts keeping the clean top-1 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['corruption']} | {r['layers_run']} | {r['loss']:.3f} | {r['loss_delta']:+.3f} | {r['kl']:.3f} | "
              f"{r['top1_kept']} |" for r in done]
    return "\n".join(lines)


def note_request(steps: list[dict[str, Any]], label: str, hypothesis: str) -> str:
    """The result table with the latest experiment and its continuations; asks for a note."""
    continuations = "\n".join(f"- {p!r} -> {t[:80]!r}" for p, t in steps[-1]["result"]["continuations"])
    return (f"Results so far:\n{results_text(steps)}\n\nYou ran {label} with the hypothesis: "
            f"{hypothesis or '(none given)'}\nGreedy continuations of the corrupted model:\n{continuations}\n\n"
            "Write a short note (at most three sentences, plain text) relating this result to your current hypothesis.")


# --- The loop ---------------------------------------------------------------------------------

class StepLog:
    """steps.jsonl: one JSON line per finished step, flushed and fsynced. Reading keeps the
    complete lines before the first broken one (a write cut short by a kill) and drops the rest."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        steps, good = [], 0
        raw = self.path.read_bytes()
        for line in raw.splitlines(keepends=True):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("cut short")
                steps.append(json.loads(line))
            except ValueError:
                log.warning("%s: dropping an incomplete step after step %d (the run was killed mid-write)",
                            self.path, len(steps))
                break
            good += len(line)
        if good < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return steps

    def append(self, step: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(step) + "\n")  # ASCII: a lone surrogate is written as an escape, never an error
            f.flush()
            os.fsync(f.fileno())


def subject_description(subject: Subject) -> str:
    cfg = subject.model.config
    return (f"{subject.name}, a {cfg.model_type} transformer with {subject.neurons.n_layers} decoder layers, "
            f"{subject.neurons.n_neurons} MLP neurons per layer ({subject.neurons.architecture} MLP, "
            f"{subject.neurons.activation}), vocabulary {cfg.vocab_size}")


def run_agent(cfg: DictConfig, output_dir: Path, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Run (or resume) the agent in `output_dir`; returns the summary. `clock` measures the wall-time
    budget (injectable, so a test need not wait)."""
    check_options(cfg)
    if cfg.explainer.get("kind") != "llm":
        raise ConfigError(f"the agent needs an LLM: explainer={cfg.explainer.get('kind')} is not one; use an LLM "
                          "backend of conf/explainer/ (hf_local, openai, anthropic, openai_compatible)")
    m = check_measure(cfg.measure)
    prices = OmegaConf.to_container(cfg.pricing, resolve=True)
    backend = make_backend(cfg.explainer.llm)
    if backend.paid and backend.model not in prices:
        raise ConfigError(f"explainer.llm.model={backend.model!r} is a paid model with no price in conf/pricing/, so "
                          "its calls would cost $0 and budget.max_cost_usd would never stop the run; add its price "
                          f"(USD per million tokens), e.g. '+pricing.{backend.model}={{input: 0.15, output: 0.6}}', "
                          "or set explainer.llm.paid=false if it costs nothing")
    config = saved_config(cfg)
    saved = output_dir / "run.json"
    if saved.is_file():
        check_same_config(output_dir, json.loads(saved.read_text()), config, "an agent run", RUNTIME_ONLY)

    subject = load_subject(cfg.subject)
    n_layers = subject.neurons.n_layers
    probe = make_probe(subject, cfg.corpus, m)
    # saved once every check has passed, so a run refused for a bad option may be re-run with it fixed
    write_json(saved, config)
    ledger = Ledger(prices=prices)
    llm = LLM(backend, ledger=ledger, cache=CallCache(cfg.call_cache) if cfg.call_cache else None)
    sampling = OmegaConf.to_container(cfg.sampling, resolve=True)
    system = SYSTEM.format(subject=subject_description(subject), last=n_layers - 1, schema=schema_text())
    budget = cfg.budget
    steps_log = StepLog(output_dir / "steps.jsonl")
    records = steps_log.read()  # the steps, and the attempts an outage interrupted (their cost)
    steps = [r for r in records if "step" in r]
    if steps:
        log.info("resuming after step %d", len(steps))
    if steps and (steps[-1].get("action") or {}).get("action") == "finish":
        return finish(cfg, output_dir, subject, records, "finished")

    start = clock()
    spent_before = sum(r["seconds"] for r in records)

    def ask(messages: list[dict[str, str]]) -> str:
        return llm.chat(messages, **sampling).texts[0]

    stop = None
    while stop is None:
        cost = sum(r["cost_usd"] for r in records)
        elapsed = spent_before + clock() - start
        if len(steps) >= budget.max_steps:
            stop = "max_steps"
        elif cost >= budget.max_cost_usd:
            stop = "max_cost_usd"
        elif elapsed >= budget.max_wall_seconds:
            stop = "max_wall_seconds"
        if stop:
            break
        t0, usd0 = clock(), ledger.usd
        step: dict[str, Any] = {"step": len(steps) + 1}
        feedback = f"\nYour previous answer was invalid: {steps[-1]['error']}\n" if steps and steps[-1].get("error") else ""
        notes = "\n".join(f"- step {s['step']}: {s['note']}" for s in steps if s.get("note")) or "(none yet)"
        user = (f"Results so far:\n{results_text(steps)}\n\nYour notes so far:\n{notes}\n{feedback}\n"
                f"Steps left: {budget.max_steps - len(steps)}. {ACTION_PROMPT}")
        try:
            answer = ask([{"role": "system", "content": system}, *EXAMPLE, {"role": "user", "content": user}])
            action, error = parse_action(answer, n_layers, cfg.max_answer_chars)
            step.update(answer=answer[:cfg.max_answer_chars], action=action, error=error)
            if error:
                log.info("step %d: invalid action: %s", step["step"], for_terminal(error))
            elif action["action"] == "finish":
                if sum(1 for s in steps if s.get("result")) < cfg.min_experiments:
                    action, error = None, f"finish only after at least {cfg.min_experiments} experiment(s): run one first"
                    step.update(action=action, error=error)
                else:
                    stop = "finished"
            else:
                spec = corruption_spec(action["corruption"], n_layers)
                log.info("step %d: running %s", step["step"], spec.label)
                # measures are deterministic: a corruption run before is not measured again
                result = next((s["result"] for s in steps if (s.get("result") or {}).get("corruption") == spec.label),
                              None) or digest(measure(subject, spec, probe, m))
                step["result"] = result
                note = ask([{"role": "system", "content": system},
                            {"role": "user", "content": note_request([*steps, step], spec.label, action["hypothesis"])}])
                note = note.strip()[:cfg.max_note_chars]
                problem = text_problem(note, allow_newlines=True)
                step["note"] = f"(note refused: it held {problem})" if problem else note or "(empty note)"
        except TransientLLMError as exc:
            # An outage is not a step: the run stops and a re-run continues here, the calls this attempt
            # had answered coming from the call cache at no cost; so what they cost is logged now.
            steps_log.append({"interrupted": step["step"], "error": str(exc)[:cfg.max_answer_chars],
                              "cost_usd": ledger.usd - usd0, "seconds": clock() - t0})
            raise
        except LLMError as exc:  # refused for good
            failed = f"the model call failed: {for_terminal(str(exc))}"
            if "result" in step:  # the note's call: the experiment stands, without a note
                step["note"] = f"(no note: {failed})"[:cfg.max_note_chars]
            else:  # counted as an invalid step, the run goes on
                step.update(answer=None, action=None, error=failed[:cfg.max_answer_chars])
        step.update(cost_usd=ledger.usd - usd0, seconds=clock() - t0)
        steps_log.append(step)
        steps.append(step)
        records.append(step)
    return finish(cfg, output_dir, subject, records, stop, ledger)


def finish(cfg, output_dir: Path, subject: Subject, records: list[dict[str, Any]], stop: str,
           ledger: Ledger | None = None) -> dict[str, Any]:
    """summary.json and report.md from every line of steps.jsonl (steps, and interrupted attempts,
    whose cost and time count)."""
    steps = [r for r in records if "step" in r]
    final = next((s["action"]["summary"] for s in steps if (s.get("action") or {}).get("action") == "finish"), None)
    summary = {"harness_version": __version__, "subject": subject.name, "agent": redact(OmegaConf.to_container(cfg.explainer.llm, resolve=True)),
               "stop_reason": stop, "steps": len(steps),
               "experiments": sum(1 for s in steps if s.get("result")),
               "invalid_actions": sum(1 for s in steps if s.get("error")),
               "interrupted_attempts": len(records) - len(steps),
               "cost_usd": sum(r["cost_usd"] for r in records), "seconds": sum(r["seconds"] for r in records),
               "summary": final, "ledger_this_session": ledger.summary() if ledger else None}
    write_atomic(output_dir / "report.md", report_markdown(summary, steps))
    mark_done(output_dir, summary)
    return summary


def report_markdown(summary: dict[str, Any], steps: list[dict[str, Any]]) -> str:
    """The run as Markdown; every text from outside (model text, error messages, the model's name) is
    shown as inert plain text (`harness.text.for_markdown`)."""
    stop = {"finished": "the agent finished", "max_steps": "the step budget was reached",
            "max_cost_usd": "the cost budget was reached", "max_wall_seconds": "the wall-time budget was reached"}
    interrupted = summary["interrupted_attempts"]
    parts = [f"# Corruption agent on {for_markdown(summary['subject'])}", "",
             f"Agent LLM: {for_markdown(summary['agent'].get('backend'))} / "
             f"{for_markdown(summary['agent'].get('model'))}. "
             f"{summary['steps']} step(s): {summary['experiments']} experiment(s), {summary['invalid_actions']} invalid "
             f"action(s); stopped because {stop.get(summary['stop_reason'], summary['stop_reason'])}. Cost "
             f"${summary['cost_usd']:.4f}, {summary['seconds']:.0f} s"
             + (f", {interrupted} attempt(s) interrupted by an outage included" if interrupted else "")
             + ". Every step is in `steps.jsonl`.", "",
             "## Final summary", "",
             for_markdown(summary["summary"], 4000) if summary["summary"]
             else "(none: the agent did not finish before a budget stopped it)",
             "", "## Results", ""]
    results = [(s["step"], s["result"]) for s in steps if s.get("result")]
    if results:
        parts += [f"Clean loss {results[0][1]['loss_clean']:.3f} nats/token; 95% CIs over held-out windows.", "",
                  "| step | corruption | layers run | loss [95% CI] | Δloss | KL [95% CI] | prompts keeping the clean top-1 |",
                  "|---|---|---|---|---|---|---|"]
        parts += [f"| {n} | `{r['corruption']}` | {r['layers_run']} | {fmt(r['loss'])} [{fmt(r['loss_ci'][0])}, "
                  f"{fmt(r['loss_ci'][1])}] | {r['loss_delta']:+.3f} | {fmt(r['kl'])} [{fmt(r['kl_ci'][0])}, "
                  f"{fmt(r['kl_ci'][1])}] | {r['top1_kept']} |" for n, r in results]
        parts.append("")
    else:
        parts += ["(no experiment ran)", ""]
    parts += ["## Trajectory", ""]
    for s in steps:
        parts.append(f"### Step {s['step']}")
        parts.append("")
        a = s.get("action") or {}
        if s.get("error"):
            parts += [f"Invalid action: {for_markdown(s['error'], 500)}", "",
                      f"Answer: {for_markdown(s.get('answer') or '', 300)}"]
        elif a.get("action") == "finish":
            parts.append("Finished.")
        else:
            r = s["result"]
            parts += [f"- hypothesis: {for_markdown(a.get('hypothesis') or '(none)', 500)}",
                      f"- experiment: `{r['corruption']}` ({r['layers_run']} layers run)",
                      f"- result: loss {r['loss']:.3f} ({r['loss_delta']:+.3f}), KL {r['kl']:.3f}, clean top-1 kept on "
                      f"{r['top1_kept']} prompts",
                      f"- note: {for_markdown(s.get('note') or '', 600)}"]
        parts += ["", f"(cost ${s['cost_usd']:.4f}, {s['seconds']:.0f} s)", ""]
    return "\n".join(parts)


def check_options(cfg: DictConfig) -> None:
    """Every option against harness.validation.RULES (the same table as a cell's), the agent's own
    options required."""
    problems = option_problems(OmegaConf.to_container(cfg, resolve=True), required=AGENT_OPTIONS)
    if problems:
        raise ConfigError("invalid agent options: " + "; ".join(problems))


@hydra.main(version_base="1.3", config_path="../conf", config_name="agent")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    output_dir = hydra_output_dir()
    run_cfg, overwrite = run_options(cfg)
    with lock_output_dir(output_dir):
        if overwrite:
            for name in ("steps.jsonl", "run.json", "summary.json", "report.md"):
                (output_dir / name).unlink(missing_ok=True)
        summary = run_agent(run_cfg, output_dir)
    print(f"stopped: {summary['stop_reason']} after {summary['steps']} step(s) ({summary['experiments']} experiments, "
          f"{summary['invalid_actions']} invalid), ${summary['cost_usd']:.4f}")
    print(f"wrote {output_dir / 'steps.jsonl'}, summary.json and report.md")


if __name__ == "__main__":
    main()
