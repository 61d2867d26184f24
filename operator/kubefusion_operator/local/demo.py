"""`kubefusion demo init [--dir demo]`: build the quickstart's tiny models and datasets on CPU, no download.

Writes <dir>/data/{addition,reversal}.jsonl, <dir>/models/{adder,reverser,target,reward} and
<dir>/world.json (each model's greedy accuracy per skill). examples/quickstart.yaml points at demo/.
Existing models are kept, so running it again is quick.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubefusion demo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="build the quickstart world")
    init.add_argument("--dir", default="demo", help="where to write it. Default demo/.")
    init.add_argument(
        "--profile",
        default="full",
        choices=["full", "small"],
        help="full: the quickstart; small: fewer prompts (the CI test). Default full.",
    )
    init.add_argument("--seed", type=int, default=0, help="seed for data and weights. Default 0.")
    init.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads. Default 1 (tiny matrices: more threads mostly add overhead).",
    )
    args = parser.parse_args(argv)

    from kubefusion_trainer.demo_world import build_demo_world

    summary = build_demo_world(
        args.dir,
        profile=args.profile,
        seed=args.seed,
        threads=args.threads,
        log=lambda line: print(line, flush=True),
    )
    print(
        f"demo: world ready in {args.dir}/ ({len(summary['models'])} models, "
        f"{len(summary['datasets'])} datasets); next: kubefusion run -f examples/quickstart.yaml"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
