"""String fields that are safe to store anywhere: strict JSON strings without NUL or lone surrogates."""

from typing import Annotated

from pydantic import AfterValidator, Field, StrictStr


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must not contain unpaired surrogates") from None
    return value


# The OpenAPI document says "no NUL" too; lone surrogates (`"\ud800"`) have no JSON Schema spelling.
CleanStr = Annotated[StrictStr, AfterValidator(_storable), Field(json_schema_extra={"not": {"pattern": "\\x00"}})]
