"""The `rlhf-fast` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-fast", description="Fast RLHF (InstructGPT) trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and available kernel backends")
    args = parser.parse_args(argv)
    if args.command == "info":
        from rlhf_fast.info import main as info_main

        return info_main()
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
