"""Command-line parsing shared by every script (train, generate, evaluate, prepare_data).

Options are accepted with hyphens or underscores (`--max-new-tokens` and
`--max_new_tokens`, `--max_iters` and `--max-iters`), never abbreviated; a
mistake on the command line is a one-line MinigptError like any other bad
input, and a misspelled or abbreviated option is answered with the real one.
A negative number is a value in every spelling (`--learning_rate -1e-3` as `-0.001`).
"""

import argparse
import difflib
import re

from minigpt.errors import MinigptError


# a negative number in any spelling float() takes: -1, -0.5, -.5, -1e-3, -1E+3, -inf
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Ends each option's help with its default, unless the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are MinigptErrors (one line, exit 2 under run_cli), and whose --help
    shows every option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # --temp is not --temperature: a misspelling gets "did you mean"
        super().__init__(*args, **kwargs)
        # argparse takes "-1e-3" for an option (its test knows only -1 and -0.001): every number is a value
        self._negative_number_matcher = NEGATIVE_NUMBER

    def add_option(self, *names, **kwargs):
        """Add `--some-name`, also accepted as `--some_name` (or the other way round); returns the action."""
        return add_option(self, *names, **kwargs)

    def error(self, message):
        raise MinigptError(f"{message}{self._suggestion(message)} (see --help)")

    def _suggestion(self, message) -> str:
        """"; did you mean --max_iters?" for an unrecognized `--max_iter`, else ""."""
        prefix = "unrecognized arguments: "
        if not message.startswith(prefix):
            return ""
        known = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
        for word in message[len(prefix):].split():
            if word.startswith("--"):
                word = word.split("=", 1)[0]
                # an abbreviation (--temp) means the option it starts; else the closest spelling (--max_iter)
                close = [k for k in known if k.startswith(word)][:1] or difflib.get_close_matches(word, known, n=1)
                if close:
                    return f"; did you mean {close[0]}?"
        return ""


def hyphenated(name: str) -> str:
    """A parameter's name as an option of generate.py or evaluate.py: top_k -> --top-k."""
    return "--" + name.replace("_", "-")


def add_option(parser, *names, **kwargs):
    """Add each of `names` (as `--some-name`) to `parser` with its other spelling (`--some_name`) as well.

    `parser` may be an ArgumentParser or one of its groups. The first name
    spelled as given sets the option's `dest` (`--max-new-tokens` -> max_new_tokens).
    """
    spellings = []
    for name in names:
        body = name[2:]
        other = "--" + (body.replace("-", "_") if "-" in body else body.replace("_", "-"))
        spellings += [name] + ([other] if other != name else [])
    return parser.add_argument(*spellings, **kwargs)
