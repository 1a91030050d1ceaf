"""The `bench` command line. Exit codes: 0 all good; 2 bad input (nothing written); 1 a trial or stage failed."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from bench.errors import BadInput, RuntimeFailure
from bench.progress import quiet_libraries

HEADS = ["linear", "mlp", "lm_top1", "lm_top2"]  # the reward-model classes (bench/kit/reward_models.py make_head)


def check_head(task: str, head: str) -> None:
    """A trainable-layer class (lm_top<k>) needs a task whose reward models read a language model."""
    from bench import registry

    if head.startswith("lm_top") and registry.get_task(task).realignment is None:
        raise BadInput(f"--head {head} trains the top blocks of a language model, which task {task!r} has none of; "
                       f"use --head linear or --head mlp.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("ls", help="list methods, tasks or profiles")
    ls.add_argument("what", choices=["methods", "tasks", "profiles"])

    run = sub.add_parser("run", help="run methods on a task over seeds and write its leaderboard")
    run.add_argument("--methods", default="all", help="all, or NAME[,NAME...] (see `bench ls methods`)")
    run.add_argument("--task", required=True, help="task name (see `bench ls tasks`)")
    run.add_argument("--profile", default="default", help="task profile (see `bench ls profiles`)")
    run.add_argument("--seeds", type=int, default=5, help="number of seeds per method (seeds 0..N-1)")
    run.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where trials and artifacts are stored")
    run.add_argument("--leaderboards-dir", type=Path, default=None,
                     help="default: RUNS_DIR/leaderboards (git-ignored), as <task>.* for the default profile and "
                          "<task>-<group>.* otherwise; the committed leaderboards/ change only by `bench publish`")
    run.add_argument("--tuned-dir", type=Path, default=Path("tuned"),
                     help="frozen configs from `bench sweep` (used when present for the task and profile)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting: METHOD.KEY=V, task.KEY=V, or KEY=V for every method that has KEY")
    run.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. auto) instead of local Ray")
    run.add_argument("--gpus-per-trial", type=float, default=None,
                     help="GPUs per trial (fractions allowed); default: this machine's GPUs shared by its "
                          "trials, 0 without")
    run.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    run.add_argument("--rerlhf", default=None, metavar="MODE",
                     help="re-align π₀ with each recovered reward: rloo | grpo | bon (best-of-n only) | off; default: "
                          "the expert's own algorithm on tasks with policies (detox), off elsewhere")
    run.add_argument("--rerlhf-seeds", type=int, default=1,
                     help="re-align with the rewards of seeds 0..N-1 of each method (each costs an RLHF run)")
    run.add_argument("--rerlhf-normalisation", default="batch", choices=["batch", "affine"],
                     help="how r̂ is scaled for re-alignment: z-scored per generation batch (batch), or one affine "
                          "map fitted on π₀'s training samples (affine: R* itself then reproduces the expert)")
    run.add_argument("--head", default="linear", choices=HEADS,
                     help="the reward-model class of every method that has one: a head over the frozen features, or "
                          "lm_top<k> (the LM's last k blocks train with a linear head; tasks with a language model); "
                          "one class per table: another class is its own run group <profile>+<head>")
    run.add_argument("--rerlhf-methods", default="all",
                     help="all (of --methods), or NAME[,NAME...]: which methods' rewards to re-align with")
    run.add_argument("--tracker", default=None, choices=["tensorboard", "mlflow", "wandb"],
                     help="also log every trial to TensorBoard (RUNS_DIR/<task>/<group>/ray), MLflow (a local file "
                          "store <group>/mlruns, or MLFLOW_TRACKING_URI) or W&B (offline, <group>/wandb)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (what is cached, what runs, the estimated time) and exit")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="show the libraries' own progress bars, warnings and info logs")

    sweep = sub.add_parser("sweep", help="tune a method on validation pairs; freeze the best config for `bench run`")
    target = sweep.add_mutually_exclusive_group(required=True)
    target.add_argument("--method", dest="methods", help="the method to tune")
    target.add_argument("--methods", dest="methods", help="all, or NAME[,NAME...]: the same budget for each")
    sweep.add_argument("--task", required=True)
    sweep.add_argument("--profile", default="default")
    sweep.add_argument("--trials", type=int, default=8, help="configurations sampled from the search space")
    sweep.add_argument("--seeds-per-trial", type=int, default=1, help="tuning seeds per configuration")
    sweep.add_argument("--scheduler", default="fifo",
                       help="fifo (every configuration completes: equal completed trials per method) or asha "
                            "(early stopping over tuning seeds: cheaper, but completes a different count per method)")
    sweep.add_argument("--metric", default="val_pair_accuracy", help="validation-only objective")
    sweep.add_argument("--runs-dir", type=Path, default=Path("runs"))
    sweep.add_argument("--tuned-dir", type=Path, default=Path("tuned"), help="where frozen configs are written")
    sweep.add_argument("--address", default=None, help="join an existing Ray cluster")
    sweep.add_argument("--gpus-per-trial", type=float, default=None)
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    sweep.add_argument("-v", "--verbose", action="store_true",
                       help="show the libraries' own progress bars, warnings and info logs")
    sweep.add_argument("--head", default="linear", choices=HEADS,
                       help="the reward-model class every tuned method is fixed to (not searched); frozen configs "
                            "of another class than linear go to tuned/<task>/<profile>+<head>/")

    pub = sub.add_parser("publish", help="copy a task's latest run into a committed results directory")
    pub.add_argument("--task", required=True)
    pub.add_argument("--runs-dir", type=Path, default=Path("runs"))
    pub.add_argument("--results-dir", type=Path, default=Path("results"))
    pub.add_argument("--leaderboards-dir", type=Path, default=Path("leaderboards"))

    board = sub.add_parser("leaderboard", help="rebuild leaderboards from stored runs")
    board.add_argument("--task", default=None, help="one task (default: every task with stored runs)")
    board.add_argument("--runs-dir", type=Path, default=Path("runs"))
    board.add_argument("--leaderboards-dir", type=Path, default=None,
                       help="default: leaderboards/ (committed) for --runs-dir results, else RUNS_DIR/leaderboards")

    compare = sub.add_parser("compare", help="B − A per method and metric between two leaderboards of one task")
    compare.add_argument("a", type=Path, help="leaderboard JSON (leaderboards/<task>.json) or run group directory")
    compare.add_argument("b", type=Path, help="the same kind of input, for the other run")
    compare.add_argument("--metrics", default=None, help="NAME[,NAME...] (default: every metric)")
    compare.add_argument("--markdown", type=Path, default=None, help="also write the comparison as a Markdown table")
    compare.add_argument("--title", default=None, help="the Markdown table's title")

    env = sub.add_parser("env", help="versions, devices, generation engines and the artifact cache (for bug reports)")
    env.add_argument("--runs-dir", type=Path, default=Path("runs"), help="whose cache to report (or IRL_BENCH_CACHE)")
    env.add_argument("--json", action="store_true", help="emit JSON")

    cache = sub.add_parser("cache", help="list, verify or garbage-collect the artifact cache")
    cache.add_argument("action", choices=["ls", "verify", "gc"])
    cache.add_argument("--runs-dir", type=Path, action="append", default=None,
                       help="runs directory whose stored runs keep artifacts (default runs; repeat it for every runs "
                            "directory sharing an IRL_BENCH_CACHE); its cache is the one managed")
    cache.add_argument("--dry-run", action="store_true", help="gc: list what would be removed and the bytes freed")
    cache.add_argument("--min-age", type=float, default=60.0, metavar="MINUTES",
                       help="gc: keep unreferenced artifacts younger than this (a run names its artifacts at its end)")

    worlds = sub.add_parser("worlds", help="every method on every stress world (tuned per world) -> the matrix board")
    worlds.add_argument("--task", default="synthetic", help="a task with world-* profiles")
    worlds.add_argument("--worlds", default="all", help="all, or NAME[,NAME...] (see `bench ls profiles`: world-*)")
    worlds.add_argument("--methods", default="bradley_terry,max_margin,failure_aware,random,oracle,implicit")
    worlds.add_argument("--seeds", type=int, default=5, help="confirmation seeds per cell (0..N-1)")
    worlds.add_argument("--tune-trials", type=int, default=10, help="configurations per trained method and world")
    worlds.add_argument("--tune-seeds", type=int, default=2, help="tuning seeds per configuration (all completed)")
    worlds.add_argument("--head", default="linear", help="the one reward head every trained method uses")
    worlds.add_argument("--runs-dir", type=Path, default=Path("runs"))
    worlds.add_argument("--tuned-dir", type=Path, default=Path("tuned"))
    worlds.add_argument("--leaderboards-dir", type=Path, default=None, help="default: RUNS_DIR/leaderboards")
    worlds.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    worlds.add_argument("--rebuild", action="store_true", help="only rewrite the board from stored runs")

    audit = sub.add_parser("inspect", help="audit view: failure pairs by kind, R* bins, what each reward penalises")
    audit.add_argument("--task", required=True)
    audit.add_argument("--runs-dir", type=Path, default=Path("runs"), help="results for the committed runs")
    audit.add_argument("--profile", default=None, help="the run of this profile (default: the task's latest run)")
    audit.add_argument("--method", default=None, help="failure pairs of this method only (and its refit token probe)")
    audit.add_argument("--top", type=int, default=10, help="K: pairs shown per kind, tokens/words, precision@K")
    audit.add_argument("--min-count", type=int, default=2, help="word view: test completions a word must be in")
    audit.add_argument("--json", action="store_true", help="emit the document as JSON")
    audit.add_argument("--html", type=Path, default=None, help="also write a self-contained HTML page here")

    amb = sub.add_parser("ambiguity", help="refit a run's methods over seeds, bootstrap resamples and regularisation "
                                           "strengths -> three ambiguity spreads (docs/ambiguity.md)")
    amb.add_argument("--task", required=True)
    amb.add_argument("--profile", default="default", help="the stored run of this profile")
    amb.add_argument("--methods", default="trained",
                     help="trained (the run's methods with a weight_decay), or NAME[,NAME...] of the run's methods")
    amb.add_argument("--resamples", type=int, default=5, help="bootstrap resamples of the training prompts")
    amb.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 in the identifiability grid")
    amb.add_argument("--runs-dir", type=Path, default=Path("runs"))
    amb.add_argument("--address", default=None, help="join an existing Ray cluster")
    amb.add_argument("--gpus-per-trial", type=float, default=None)
    return parser


def cmd_ambiguity(args, console) -> int:
    from bench.execution import ambiguity

    report = ambiguity.run_ambiguity(ambiguity.AmbiguityRequest(
        task=args.task, profile=args.profile, methods=args.methods, resamples=args.resamples, seeds=args.seeds,
        runs_dir=args.runs_dir, address=args.address, gpus_per_trial=args.gpus_per_trial), console)
    for method, m in report.methods.items():
        console.print(f"{method}: " + "; ".join(f"{k} {m[k]['mean']} {m[k]['ci']}" for k in
                                                  ("seeds", "data", "identifiability")), highlight=False)
    failed = {method: m["failed_fits"] for method, m in report.methods.items() if m["failed_fits"]}
    for method, fits in failed.items():
        console.print(f"[red]{method}: {len(fits)} fit(s) failed[/red], left out of its spreads; first error: "
                      f"{fits[0]['error']}", highlight=False)
    return 1 if failed else 0


def cmd_inspect(args, console) -> int:
    import json

    from bench.audit import render, view

    doc = view.inspect(view.InspectRequest(task=args.task, runs_dir=args.runs_dir, profile=args.profile,
                                           method=args.method, top=args.top, min_count=args.min_count))
    if args.html is not None:
        print(f"wrote {render.write_html(doc, args.html)}", file=sys.stderr)
    sys.stdout.write(json.dumps(doc, indent=1, ensure_ascii=False) + "\n" if args.json else render.render_text(doc))
    return 0


def cmd_worlds(args, console) -> int:
    from bench.execution import worlds

    request = worlds.WorldsRequest(
        task=args.task, worlds=args.worlds, methods=args.methods, seeds=args.seeds, tune_trials=args.tune_trials,
        tune_seeds=args.tune_seeds, head=args.head, runs_dir=args.runs_dir, tuned_dir=args.tuned_dir,
        leaderboards_dir=args.leaderboards_dir, bootstrap=args.bootstrap)
    if args.rebuild:
        doc = worlds.rebuild(request, console=console)
    else:
        doc, seconds = worlds.run_worlds(request, console)
        console.print(f"worlds matrix: {len(doc['worlds'])} worlds in {seconds / 60:.1f} min", highlight=False)
    for h in doc["hypotheses"]:
        console.print(f"{h['id']} {h['verdict']}: {h['claim']} ({h['world']})", highlight=False)
    return 0


def cmd_ls(args, console) -> int:
    from bench import registry

    if args.what == "methods":
        for name, cls in registry.methods().items():
            print(f"{name:16s} {cls.description}")
    elif args.what == "tasks":
        for name, cls in registry.tasks().items():
            print(f"{name:16s} {cls.description}")
    else:
        for name, cls in registry.tasks().items():
            for profile, spec in cls.profiles.items():
                print(f"{name + ':' + profile:24s} {spec.description}")
    return 0


def cmd_run(args, console) -> int:
    from bench.execution import run as pipeline

    check_head(args.task, args.head)
    request = pipeline.RunRequest(
        task=args.task, methods=args.methods, profile=args.profile, seeds=args.seeds, runs_dir=args.runs_dir,
        leaderboards_dir=args.leaderboards_dir, assignments=args.set, address=args.address,
        gpus_per_trial=args.gpus_per_trial, bootstrap=args.bootstrap, tuned_dir=args.tuned_dir,
        rerlhf=args.rerlhf, rerlhf_seeds=args.rerlhf_seeds, rerlhf_methods=args.rerlhf_methods,
        rerlhf_normalisation=args.rerlhf_normalisation, head=args.head, tracker=args.tracker,
    )
    plan = pipeline.plan(request)
    if args.dry_run:
        from bench.execution import plan as preview

        preview.render(preview.preview(plan), console)
        return 0
    doc = pipeline.execute_plan(plan, console)
    print_summary(doc, console)
    failed = sum(len(r["failures"]) for r in doc["rows"])
    if failed:
        console.print(f"[red]{failed} trial(s) failed[/red]; their errors are in the leaderboard.")
        return 1
    return 0


def cmd_sweep(args, console) -> int:
    from bench.execution import sweep

    check_head(args.task, args.head)
    request = sweep.SweepRequest(
        task=args.task, methods=args.methods, profile=args.profile, trials=args.trials,
        seeds_per_trial=args.seeds_per_trial, scheduler=args.scheduler, metric=args.metric, runs_dir=args.runs_dir,
        tuned_dir=args.tuned_dir, address=args.address, gpus_per_trial=args.gpus_per_trial, resume=args.resume,
        head=args.head,
    )
    for method, frozen in sweep.sweep(request, console).items():
        b = frozen["budget"]
        console.print(
            f"{method}: best {frozen['objective']['metric']} {frozen['objective']['value']:.4f} "
            f"({b['configurations']} configurations, {b['stopped_early']} stopped early, {b['cpu_hours']:.4f} CPU-h) "
            f"-> {frozen['path']}", highlight=False,
        )
    return 0


def cmd_publish(args, console) -> int:
    from bench.reporting.publish import publish

    paths = publish(args.task, args.runs_dir, args.results_dir, args.leaderboards_dir)
    console.print(f"published to {args.results_dir}; wrote " + ", ".join(str(p) for p in paths), highlight=False)
    return 0


def cmd_leaderboard(args, console) -> int:
    from bench.reporting import document as leaderboard

    tasks = [args.task] if args.task else leaderboard.tasks_with_runs(args.runs_dir)
    if not tasks:
        raise BadInput(f"no stored runs under {args.runs_dir}; run `bench run --task NAME` first.")
    for task in tasks:
        group = leaderboard.latest_group(args.runs_dir, task)
        doc = leaderboard.build(group)
        paths = leaderboard.write(doc, *leaderboard.output_of(args.runs_dir, group, args.leaderboards_dir))
        console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False)
    return 0


def cmd_compare(args, console) -> int:
    from bench.reporting import compare

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    a, b = compare.load(args.a, "A"), compare.load(args.b, "B")
    result = compare.compare(a, b, metrics)
    compare.print_comparison(result, console)
    if args.markdown:
        args.markdown.write_text("\n".join(compare.markdown_lines(result, args.title)), encoding="utf-8")
        console.print(f"wrote {args.markdown}")
    return 0


def cmd_env(args, console) -> int:
    import json

    from bench import environment

    report = environment.report(args.runs_dir)
    print(json.dumps(report, indent=1) if args.json else "\n".join(environment.render(report)))
    return 0


def cmd_cache(args, console) -> int:
    from bench.storage import cache_admin

    lines, code = cache_admin.command(args.action, args.runs_dir or [Path("runs")], dry_run=args.dry_run,
                                      min_age_s=args.min_age * 60)
    print("\n".join(lines))
    return code


def print_summary(doc, console) -> None:
    from bench.reporting.console import print_summary as table  # the headline metrics that fit the terminal

    table(doc, console)


def main(argv=None) -> int:
    from rich.console import Console

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0 Tune then prints nothing; we show our own bar
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    console = Console()
    if not console.is_terminal:  # piped output: rich would wrap the tables at 80 columns
        console = Console(width=140)
    args = build_parser().parse_args(argv)
    quiet_libraries(getattr(args, "verbose", False))
    handlers = {"ls": cmd_ls, "run": cmd_run, "sweep": cmd_sweep, "leaderboard": cmd_leaderboard,
                "compare": cmd_compare, "publish": cmd_publish, "env": cmd_env, "cache": cmd_cache}
    handlers["worlds"] = cmd_worlds
    handlers["inspect"] = cmd_inspect
    handlers["ambiguity"] = cmd_ambiguity
    try:
        return handlers[args.command](args, console)
    except (BadInput, RuntimeFailure) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; finished trials are kept and a rerun continues from them.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
