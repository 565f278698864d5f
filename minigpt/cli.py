"""Command-line parsing shared by scripts/generate.py and scripts/evaluate.py.

Options are spelled with hyphens and also accepted with underscores
(`--max-new-tokens` and `--max_new_tokens`), as scripts/train.py accepts both;
a mistake on the command line is a one-line MinigptError like any other bad input.
"""

import argparse

from minigpt.errors import MinigptError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are MinigptErrors (one line, exit 2 under run_cli)."""

    def error(self, message):
        raise MinigptError(f"{message} (see --help)")


def add_option(parser, name, **kwargs):
    """Add `--some-name`, also accepted as `--some_name`."""
    spellings = [name] + (["--" + name[2:].replace("-", "_")] if "-" in name[2:] else [])
    parser.add_argument(*spellings, **kwargs)
