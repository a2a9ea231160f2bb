"""The `harmony-rt` command (and `python -m harmony_rt`).

A Ctrl-C while the CLI's modules are still being imported (the first ~0.2 s) ends as one during a command
does: `error: interrupted`, exit 130, no traceback.
"""

import sys


def run() -> None:
    try:
        from .cli import main

        main(prog_name="harmony-rt")
    except KeyboardInterrupt:  # raised before the CLI's own handling was in place
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    run()
