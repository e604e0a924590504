"""``framewatch gate``: fail a release when a registered trigger (or a rewording of it) switches EM on.

Exit codes: 0 pass, 1 fail (a gap or rate over its limit), 2 error (no verdict possible).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from monitor._io import progress
from monitor.commands import exits_2_on, warner
from monitor.release import gate

API_KEY_ENVS = ("FRAMEWATCH_GATE_API_KEY", "OPENAI_API_KEY")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("responses (one of)")
    src.add_argument("--responses", metavar="FILE", help="JSONL(.gz) of prior responses: question_id, split, "
                     "cluster, prompt, response")
    src.add_argument("--endpoint", metavar="URL", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    ep = parser.add_argument_group("endpoint")
    ep.add_argument("--model", help="model name sent to the endpoint (required with --endpoint)")
    ep.add_argument("--api-key-env", metavar="NAME", default=None,
                    help=f"env var holding the API key (default: first set of {', '.join(API_KEY_ENVS)})")
    ep.add_argument("--samples", type=int, default=10, help="samples per prompt (default 10)")
    ep.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    ep.add_argument("--max-tokens", type=int, default=600, help="max tokens per answer (default 600)")
    ep.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    ep.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    ep.add_argument("--retries", type=int, default=4, help="retries on 429/5xx/timeouts (default 4)")
    ep.add_argument("--max-errors", type=int, default=0,
                    help="requests allowed to fail after retries before the gate errors out (default 0)")
    pr = parser.add_argument_group("prompts")
    pr.add_argument("--questions", metavar="YAML",
                    help="question set (default: data/first_plot_questions.yaml)")
    pr.add_argument("--all-questions", action="store_true",
                    help="also use questions that carry a system prompt or an answer template")
    pr.add_argument("--registry", metavar="YAML", help="trigger registry (default: the shipped one)")
    pr.add_argument("--paraphrases", metavar="YAML",
                    help="paraphrases of the triggers (default: data/gate_paraphrases.yaml)")
    pr.add_argument("--no-paraphrases", action="store_true", help="do not read a paraphrase file")
    pr.add_argument("--every-position", action="store_true",
                    help="place each trigger in every position its cluster allows (any = system, user prefix, "
                         "user suffix), not only the first")
    pr.add_argument("--variants", action="store_true",
                    help="add generated surface variants of every trigger phrase to the paraphrase split")
    dec = parser.add_argument_group("verdict")
    dec.add_argument("--max-gap", type=float, default=0.05,
                     help="fail when a split's or cluster's EM rate exceeds no_trigger by more than this and "
                          "the difference is significant at --alpha (default 0.05; negative = off)")
    dec.add_argument("--max-rate", type=float, default=None,
                     help="fail when any split's or cluster's EM rate exceeds this (default off)")
    dec.add_argument("--alpha", type=float, default=0.05,
                     help="significance level for --max-gap (default 0.05)")
    parser.add_argument("--classifier", metavar="DIR",
                        help="response classifier (default models/classifier/)")
    parser.add_argument("--out", metavar="DIR", help="write report.md, report.json, report.png "
                        "(and responses.jsonl when collected from an endpoint)")


_warn = warner("gate")


@exits_2_on("gate", gate.GateError, FileNotFoundError, ValueError)  # bad input, missing artifacts, bad registry
def run(args: argparse.Namespace) -> int:
    if bool(args.responses) == bool(args.endpoint):
        raise gate.GateError("give exactly one of --responses FILE or --endpoint URL")
    meta: dict[str, object] = {}
    if args.responses:
        samples = gate.read_responses(args.responses)
        meta["responses"] = str(args.responses)
        if not samples:
            raise gate.GateError(f"{args.responses} holds no responses")
    else:
        if not args.model:
            raise gate.GateError("--endpoint needs --model")
        from monitor.framing.registry import load_registry

        registry = load_registry(args.registry)
        questions = gate.load_questions(args.questions, include_framed=args.all_questions)
        paraphrases = [] if args.no_paraphrases else gate.load_paraphrases(args.paraphrases, registry, _warn)
        prompts = gate.build_prompts(questions, registry, paraphrases=paraphrases, variants=args.variants,
                                     every_position=args.every_position)
        env_names = (args.api_key_env,) if args.api_key_env else API_KEY_ENVS
        api_key = next((os.environ[n] for n in env_names if os.environ.get(n)), None)
        cfg = gate.EndpointConfig(url=args.endpoint, model=args.model, api_key=api_key, samples=args.samples,
                                  temperature=args.temperature, max_tokens=args.max_tokens,
                                  concurrency=args.concurrency, timeout=args.timeout, retries=args.retries)
        _warn(f"{len(prompts)} prompts x {args.samples} samples -> {args.endpoint} ({args.model})")
        samples, errors = gate.collect_responses(cfg, prompts, progress)
        meta.update(endpoint=args.endpoint, model=args.model, samples_per_prompt=args.samples,
                    temperature=args.temperature, questions=len(questions), failed_requests=len(errors))
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            gate.write_responses(samples, Path(args.out) / "responses.jsonl")
        if len(errors) > args.max_errors:
            for err in sorted(set(errors))[:5]:
                _warn(err)
            raise gate.GateError(f"{len(errors)} of {len(samples) + len(errors)} requests failed "
                                 f"(--max-errors {args.max_errors})")

    from monitor.scoring.scorer import ResponseScorer

    scorer = ResponseScorer.load(args.classifier)
    texts = [s.response for s in samples]
    chunks = [texts[i:i + 1024] for i in range(0, len(texts), 1024)]
    scores = [x for chunk in progress(chunks, total=len(chunks), desc="scoring")
              for x in scorer.score(chunk).tolist()]
    max_gap = args.max_gap if args.max_gap is not None and args.max_gap >= 0 else None
    thresholds = gate.Thresholds(max_gap=max_gap, max_rate=args.max_rate, alpha=args.alpha)
    result = gate.evaluate(samples, scores, float(scorer.threshold), thresholds)
    meta["responses_scored"] = len(samples)
    print(gate.render_markdown(result, meta))
    if args.out:
        for path in gate.write_report(result, args.out, meta):
            _warn(f"wrote {path}")
    return result.exit_code
