"""Settings, read from the environment or a `.env` file (see the README's configuration table)."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import stat
import time
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

MIN_SECRET_LENGTH = 32
DEV_SECRET_FILE = Path(".todo-api-secret")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAME = r"^[A-Za-z0-9._-]+$"  # a Kafka topic, a Redis key, a Dapr component name alike


class ConfigError(Exception):
    """A setting that makes it unsafe or impossible to start; the message is one line for the operator."""


def _https_or_loopback(url: str) -> bool:
    parsed = urlsplit(url)
    if parsed.scheme == "https":
        return True
    host = parsed.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unmapped(network: IPNetwork) -> IPNetwork:
    """`::ffff:10.0.0.0/104` is the IPv4 network 10.0.0.0/8 (clients are compared as IPv4 addresses)."""
    mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
    if mapped is not None and network.prefixlen >= 96:
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: str = "sqlite:///./todo.db"
    database_url_direct: str | None = None
    db_timeout: float = Field(default=5.0, gt=0, le=300)
    db_pool_size: int = Field(default=10, ge=1, le=100)
    db_max_overflow: int = Field(default=5, ge=0, le=100)

    environment: Literal["development", "production"] = "development"
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    access_log: bool = True  # one line per request (todo_api.access); `todo-api serve --no-access-log` turns it off
    metrics_enabled: bool = True
    metrics_token: SecretStr | None = None

    better_auth_secret: SecretStr | None = None
    better_auth_url: str | None = None
    better_auth_jwks_url: str | None = None
    better_auth_issuer: str | None = None
    better_auth_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    access_token_expire_minutes: int = Field(default=60, ge=1, le=60 * 24 * 30)
    bcrypt_rounds: int = Field(default=12, ge=4, le=16)

    login_rate_limit: str = "10/minute"
    login_ip_rate_limit: str = "30/minute"
    signup_rate_limit: str = "20/minute"
    redis_url: str | None = None
    trusted_proxies: Annotated[list[IPNetwork], NoDecode] = []

    cors_origins: Annotated[list[str], NoDecode] = []

    # Events (the outbox and its relay; see todo_api.events). Declared after redis_url, which redis needs.
    events_publisher: Literal["none", "log", "dapr", "redis", "kafka"] = "none"
    events_relay: Literal["inline"] | None = None
    events_topic: str = Field(default="todo-events", pattern=_NAME, max_length=249)
    events_source: str = Field(default="todo-api", pattern=r"^\S+$", max_length=255)
    events_retention_hours: float = Field(default=168.0, gt=0)
    dapr_http_port: int = Field(default=3500, ge=1, le=65535)
    dapr_pubsub_name: str = Field(default="pubsub", pattern=_NAME, max_length=255)
    kafka_bootstrap_servers: str | None = Field(default=None, pattern=r"^[^\s,]+(,[^\s,]+)*$")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _no_empty_token(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("events_publisher", "events_relay", mode="before")
    @classmethod
    def _parse_choice(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str):  # case-insensitive; empty means the default
            return value.strip().lower() or ("none" if info.field_name == "events_publisher" else None)
        return value

    @field_validator("events_publisher")
    @classmethod
    def _publisher_needs(cls, value: str, info: ValidationInfo) -> str:
        if value == "redis" and not info.data.get("redis_url"):
            raise ValueError("redis needs REDIS_URL")
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() or None if isinstance(value, str) else value

    @model_validator(mode="after")
    def _kafka_fits_together(self) -> Settings:
        if self.events_publisher == "kafka" and not self.kafka_bootstrap_servers:
            raise ValueError("EVENTS_PUBLISHER=kafka needs KAFKA_BOOTSTRAP_SERVERS")
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs KAFKA_SASL_MECHANISM, "
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        if not sasl and (self.kafka_sasl_mechanism or self.kafka_sasl_username or self.kafka_sasl_password):
            raise ValueError(
                f"KAFKA_SASL_* settings need KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT), "
                f"not {self.kafka_security_protocol}"
            )
        return self

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_proxies(cls, value: object) -> object:
        items = _split_commas(value)
        if isinstance(items, list):
            return [_unmapped(ipaddress.ip_network(str(item), strict=False)) for item in items]
        return items

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        origins = _split_commas(value)
        if isinstance(origins, list) and "*" in origins:
            raise ValueError("CORS_ORIGINS takes explicit origins, not '*'")
        return origins

    @field_validator("login_rate_limit", "login_ip_rate_limit", "signup_rate_limit")
    @classmethod
    def _parse_rate(cls, value: str) -> str:
        value = value.strip()
        if value != "0":
            parse_many(value)  # raises ValueError on a malformed limit such as "10/fortnight"
        return value

    @field_validator("log_level")
    @classmethod
    def _parse_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}")
        return level

    @model_validator(mode="after")
    def _default_better_auth_claims(self) -> Settings:
        # Better Auth's own defaults: iss and aud are its base URL.
        if self.better_auth_url:
            base = self.better_auth_url.rstrip("/")
            object.__setattr__(self, "better_auth_issuer", self.better_auth_issuer or base)
            object.__setattr__(self, "better_auth_audience", self.better_auth_audience or base)
        return self

    @property
    def jwks_url(self) -> str | None:
        if self.better_auth_jwks_url:
            return self.better_auth_jwks_url
        if self.better_auth_url:
            return self.better_auth_url.rstrip("/") + "/api/auth/jwks"
        return None

    @property
    def migration_url(self) -> str:
        return self.database_url_direct or self.database_url

    def check_serving(self) -> None:
        """Raise ConfigError for what production must not run with: a JWKS fetched over plain HTTP (anyone on the
        path could hand us keys), loopback hosts excepted."""
        if self.environment != "production":
            return
        for name, url in (
            ("BETTER_AUTH_URL", self.better_auth_url),
            ("BETTER_AUTH_JWKS_URL", self.better_auth_jwks_url),
        ):
            if url and not _https_or_loopback(url):
                raise ConfigError(f"{name} must be an https:// URL when ENVIRONMENT=production (got {url})")

    def production_warnings(self, workers: int) -> list[str]:
        """What is allowed in production but probably not meant."""
        if self.environment != "production":
            return []
        warnings = []
        if not (self.jwt_issuer or self.jwt_audience):
            warnings.append(
                "HS256 tokens are checked for neither iss nor aud: set JWT_ISSUER and/or JWT_AUDIENCE, so a token "
                "minted with the same secret for another service is not accepted here"
            )
        if workers > 1 and not self.redis_url:
            warnings.append(
                f"{workers} workers keep rate-limit counters in memory, each its own: the real limits are {workers} "
                "times those set; set REDIS_URL to share them"
            )
        return warnings

    def signing_secret(self) -> str:
        """The HS256 secret; raises ConfigError when it is unsafe to start with it."""
        if self.better_auth_secret is not None:
            secret = self.better_auth_secret.get_secret_value()
            if len(secret) < MIN_SECRET_LENGTH:
                raise ConfigError(
                    f"BETTER_AUTH_SECRET must be at least {MIN_SECRET_LENGTH} characters (got {len(secret)})"
                )
            return secret
        if self.environment == "production":
            raise ConfigError("BETTER_AUTH_SECRET is required when ENVIRONMENT=production")
        return _development_secret()


def _development_secret() -> str:
    """A random secret kept in a git-ignored file, so restarts and every worker share it.

    Created only if absent (O_EXCL), never through a symbolic link (O_NOFOLLOW), readable by its owner alone; a file
    found there is used only if it is a regular file of the current user that nobody else may read."""
    try:
        fd = os.open(DEV_SECRET_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass  # made before, by an earlier start or a sibling worker: checked below
    else:
        # Written in one call: a sibling worker that reads it before then finds it short and retries below.
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(48) + "\n")
    secret = _read_private(DEV_SECRET_FILE)
    log.warning(
        "BETTER_AUTH_SECRET is not set: using a random development secret kept in %s. Set BETTER_AUTH_SECRET "
        "(the one your Better Auth frontend uses) before going near production.",
        DEV_SECRET_FILE.resolve(),
    )
    return secret


def _read_private(path: Path) -> str:
    for _ in range(50):  # a sibling worker may be between creating the file and writing it
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as error:
            raise ConfigError(
                f"{path} cannot be opened safely ({error.strerror}); delete it to have a new one made"
            ) from None
        with os.fdopen(fd) as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"{path} is not a regular file; delete it to have a new one made")
            if info.st_uid != os.getuid():
                raise ConfigError(f"{path} belongs to another user; delete it to have a new one made")
            if info.st_mode & 0o077:
                raise ConfigError(
                    f"{path} may be read by others (mode {info.st_mode & 0o777:o}); delete it or chmod 600"
                )
            secret = file.read().strip()
        if len(secret) >= MIN_SECRET_LENGTH:
            return secret
        time.sleep(0.02)
    raise ConfigError(f"{path} holds a short secret; delete it to have a new one made")


@lru_cache
def get_settings() -> Settings:
    return Settings()
