"""Errors shared by every layer."""


class VmsError(Exception):
    """An error with a message fit to show an operator as is."""


class ConfigError(VmsError):
    """A settings or catalogue file is wrong; the message names the file, key and line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))
