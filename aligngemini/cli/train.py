"""``aligngemini train RECIPE.yaml``: the one trainer from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EPILOG = """\
examples:
  aligngemini train recipes/pixel-starter.yaml
      train the CPU-sized pixel expert; output in runs/pixel-starter/
  aligngemini train recipes/pixel-starter.yaml --opt train.max_steps=50 --opt train.lr=3e-4 -o runs/try
      override recipe values (dotted KEY=VALUE, values read as YAML)
  aligngemini train recipes/pixel-starter.yaml --resume
      continue the run in the output directory from its newest checkpoint, exactly
  aligngemini train recipes/pixel-dda.yaml --resume runs/pixel-dda/checkpoints/step-00002000
      continue from a given checkpoint
  accelerate launch --num_processes 8 -m aligngemini.cli train recipes/pixel-dda.yaml
  torchrun --nproc_per_node 2 -m aligngemini.cli train recipes/pixel-starter.yaml --device cpu
      the same command on several GPUs, or several CPU processes (gloo); batch_size is per process

output directory: recipe.yaml (the resolved recipe), metrics.jsonl (one line per log, eval and
checkpoint event; TensorBoard in tensorboard/ when installed), checkpoints/step-N/ (safetensors and
JSON only), branch/ (the exported branch) and train_summary.json. Ctrl-C (or SIGTERM) stops after the
current step and saves a checkpoint; a second Ctrl-C aborts without one.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from aligngemini.cli import add_quiet

    p = sub.add_parser(
        "train",
        help="train a branch from a recipe (CPU, GPU, multi-GPU; resumable)",
        description="Train the branch a recipe's 'task:' names with the one trainer (accelerate): "
        "AdamW, warmup + cosine, mixed precision on GPU, gradient accumulation, safetensors checkpoints, "
        "exact --resume, validation balanced accuracy and AUC.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", type=Path, help="recipe YAML/JSON with 'task:' and a 'train:' section")
    p.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. train.max_steps=100 (repeatable)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output directory (default: train.output_dir, else runs/<recipe name>)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CKPT_DIR",
        help="continue from the newest checkpoint in the output directory, or from CKPT_DIR",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], help="force a device (default: CUDA when available)")
    add_quiet(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    rc = _train_and_report(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_launched_worker(rc)
    return rc


def _leave_launched_worker(rc: int) -> None:
    """End a worker that torchrun or accelerate launched, skipping interpreter teardown.

    A DistributedDataParallel wrapper keeps gloo's process group and its threads alive after
    ``destroy_process_group()``; when Python then finalizes, those threads can still hold tensors
    that need the GIL, and the worker dies with SIGABRT ("terminate called without an active
    exception") after its run has finished and saved: intermittent, more often under load. Every
    file the run writes is closed by now, so flushing the standard streams and logging is all the
    teardown that matters, and ``os._exit`` leaves no time for the abort.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(rc)


def _train_and_report(args: argparse.Namespace) -> int:
    from aligngemini.config import ConfigError, load_config
    from aligngemini.train.checkpoint import CheckpointError
    from aligngemini.train.trainer import Trainer

    try:
        recipe = load_config(args.recipe, args.opt)
        output = args.output
        if output is None and not (recipe.get("train") or {}).get("output_dir"):
            output = Path("runs") / args.recipe.stem
        trainer = Trainer(recipe, output_dir=output, device=args.device, progress=not args.quiet)
        result = trainer.fit(resume=args.resume)
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":  # under torchrun/accelerate launch, one process reports
        return 130 if result.interrupted else 0
    if result.interrupted:
        again = [f"aligngemini train {args.recipe}", *(f"--opt {o}" for o in args.opt)]
        if args.output:
            again.append(f"-o {args.output}")
        print(
            f"stopped at step {result.steps}; checkpoint {result.checkpoint}\n"
            f"continue with: {' '.join(again)} --resume",
            file=sys.stderr,
        )
        return 130
    metrics = result.val_metrics or {}
    shown = ", ".join(
        f"{k} {metrics[k]:.4f}" for k in ("loss", "balanced_acc", "auc") if isinstance(metrics.get(k), float)
    )
    print(
        f"trained {result.steps} steps in {result.seconds:.1f} s{'; val ' + shown if shown else ''}\n"
        f"branch: {result.output_dir / 'branch'}\nsummary: {result.summary_path}",
        file=sys.stderr,
    )
    return 0
