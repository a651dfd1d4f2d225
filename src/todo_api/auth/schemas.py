from __future__ import annotations

from datetime import datetime
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from todo_api.auth.passwords import BCRYPT_MAX_BYTES
from todo_api.text import CleanStr


def _email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError as error:
        raise ValueError(str(error)) from None


def normalized_email(value: str) -> str:
    """The stored form of an address, or just its lower case when it is not a valid one."""
    try:
        return _email(value)
    except ValueError:
        return value.lower()


def _password(value: str) -> str:
    if len(value.encode()) > BCRYPT_MAX_BYTES:
        raise ValueError(f"must be at most {BCRYPT_MAX_BYTES} bytes in UTF-8 (bcrypt's limit)")
    return value


USERNAME_PATTERN = r"^[A-Za-z0-9_.\-]{3,32}$"
# Pydantic enforces a pattern set after a validator but leaves it out of the JSON Schema: documented by hand.
Username = Annotated[
    CleanStr,
    Field(pattern=USERNAME_PATTERN, examples=["ada_lovelace"], json_schema_extra={"pattern": USERNAME_PATTERN}),
]
Email = Annotated[
    CleanStr,
    Field(
        max_length=320,
        description="A valid address by email-validator (so no special-use domain like `.test`); stored lower-cased.",
        examples=["ada@example.com"],
        json_schema_extra={"format": "email"},
    ),
    AfterValidator(_email),
]
# `maxLength` counts characters and bcrypt counts bytes: the document states both, `_password` checks the bytes.
BCRYPT_LIMIT = f"At most {BCRYPT_MAX_BYTES} bytes in UTF-8 (bcrypt's limit)."
Password = Annotated[
    CleanStr,
    Field(
        min_length=8,
        description=BCRYPT_LIMIT,
        examples=["correct horse battery"],
        json_schema_extra={"maxLength": BCRYPT_MAX_BYTES},
    ),
    AfterValidator(_password),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SignupIn(Strict):
    username: Username
    email: Email
    password: Password
    confirm_password: CleanStr

    @field_validator("confirm_password")
    @classmethod
    def _matches_password(cls, value: str, info: ValidationInfo) -> str:
        if "password" in info.data and value != info.data["password"]:
            raise ValueError("must equal password")
        return value


class LoginIn(Strict):
    """`username` or `email`, exactly one; a username holding `@` is matched as an email."""

    model_config = ConfigDict(
        json_schema_extra={  # exactly one of the two is a string; the other is absent or null
            "oneOf": [
                {"required": ["username"], "properties": {"username": {"type": "string"}}},
                {"required": ["email"], "properties": {"email": {"type": "string"}}},
            ]
        }
    )

    username: Annotated[CleanStr, Field(min_length=1, max_length=320)] | None = None
    email: Annotated[CleanStr, Field(min_length=1, max_length=320)] | None = None
    # Any length up to bcrypt's limit: a short one simply fails to match; a longer one could never have been set.
    password: Annotated[
        CleanStr,
        Field(min_length=1, description=BCRYPT_LIMIT, json_schema_extra={"maxLength": BCRYPT_MAX_BYTES}),
        AfterValidator(_password),
    ]

    @model_validator(mode="after")
    def _one_identifier(self) -> LoginIn:
        if (self.username is None) == (self.email is None):
            raise ValueError("give exactly one of username or email")
        return self

    @property
    def identifier(self) -> str:
        """The name as sent, case-folded: what failed attempts are counted against."""
        return (self.username or self.email or "").lower()


class UserOut(BaseModel):
    id: str
    username: str
    email: str
    created_at: datetime


class TokenOut(BaseModel):
    access_token: str
    token_type: str = Field(examples=["bearer"])
    expires_in: int = Field(description="Seconds until the token expires.")
    user: UserOut


class MeOut(BaseModel):
    id: str
    username: str | None
    email: str | None
