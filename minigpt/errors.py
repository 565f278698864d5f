"""User-facing errors, and the one place that turns them into a clean exit.

Anything a user can get wrong (a bad path, a corrupt file, an impossible option)
raises `MinigptError` with a one-line message that says what is wrong and what
to do. The command-line scripts wrap their `main` in `run_cli`, which prints that
line and exits non-zero instead of showing a traceback.
"""

import sys


class MinigptError(Exception):
    """An error caused by the user's input; its message is shown as is."""


class TokenIdError(MinigptError, ValueError):
    """A token id outside the model's vocabulary: a user's error for the scripts, a ValueError for the API."""


def run_cli(main, argv=None):
    """Run `main(argv)` and turn a MinigptError into `error: ...` and exit status 2."""
    try:
        return main(argv)
    except MinigptError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
