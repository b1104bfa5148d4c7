"""``python -m ccci_rig start|stop|status|images|exec NAME``: one node of the rig.

The node's files live in ``--run-dir`` (default ``$RUN_DIR/nodes/NAME``, ``RUN_DIR`` being
``./run`` as for ``make up``). Exit codes: 0 done, 1 failed, 2 bad arguments, 3 this machine
cannot run a node (not root, a tool missing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ccci_rig.errors import RigError, RigUnavailable
from ccci_rig.images import recipe_images
from ccci_rig.node import Node

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/node.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("start", "start the node (idempotent)"),
                       ("stop", "stop the node and remove what it made (idempotent)"),
                       ("status", "print the node's state as JSON"),
                       ("images", "copy images from the host's engine to the node's"),
                       ("exec", "run a command inside the node's namespace")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("name", help="the node's name, [a-z0-9-], e.g. n2")
        cmd.add_argument("--run-dir", type=Path, help="default: $RUN_DIR/nodes/NAME")
        if name == "start":
            cmd.add_argument("--relay", type=int, action="append", default=[], metavar="PORT",
                             help="a host loopback port the node's processes reach (repeat)")
        if name == "images":
            cmd.add_argument("image", nargs="*", help="image names")
            cmd.add_argument("--recipe", type=Path, action="append", default=[],
                             help="a recipe repository: every image of its compose files")
        if name == "exec":
            cmd.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run_dir = args.run_dir or Path(os.environ.get("RUN_DIR") or Path.cwd() / "run") / "nodes" \
        / args.name
    try:
        node = Node(args.name, run_dir.resolve())
        began = time.monotonic()
        if args.command == "start":
            node.start(args.relay)
            print(f"node {node.name}: up in {time.monotonic() - began:.1f} s; "
                  f"DOCKER_HOST={node.docker_host}; run inside: ip netns exec {node.netns} ...")
        elif args.command == "stop":
            node.stop()
            print(f"node {node.name}: stopped in {time.monotonic() - began:.1f} s")
        elif args.command == "status":
            print(json.dumps(node.status(), indent=2))
        elif args.command == "images":
            wanted = list(args.image)
            for repo in args.recipe:
                wanted += recipe_images(repo)
            copied = node.copy_images(wanted)
            print(f"node {node.name}: copied {len(copied)} of {len(set(wanted))} images")
        else:
            cmd = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not cmd:
                print("exec needs a command: exec NAME -- CMD ARGS...", file=sys.stderr)
                return EXIT_USAGE
            return subprocess.call(node.argv(cmd))
    except RigUnavailable as exc:
        print(f"node: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except RigError as exc:
        print(f"node: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
