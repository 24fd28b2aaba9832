"""What the wire formats raise for bytes they cannot read (``service/errors.py`` maps them to problems)."""

from collections.abc import Sequence

Loc = Sequence[str | int]


class WireError(Exception):
    """A body that cannot be read as a document; nothing was changed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedBody(WireError):
    """The bytes are not a document of the format at all (broken JSON, not a safetensors file)."""


class InvalidValue(WireError):
    """A well-formed document with a value in it that cannot be what it stands for (an array of strings)."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = tuple(loc)

    def __reduce__(self) -> tuple[type["InvalidValue"], tuple[Loc, str]]:
        # Raised in a worker process too, and pickled back from there.
        return type(self), (self.loc, self.message)
