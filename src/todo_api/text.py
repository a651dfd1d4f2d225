"""String fields that are safe to store anywhere: strict JSON strings without NUL or lone surrogates."""

from typing import Annotated

from pydantic import AfterValidator, StrictStr


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must not contain unpaired surrogates") from None
    return value


CleanStr = Annotated[StrictStr, AfterValidator(_storable)]
