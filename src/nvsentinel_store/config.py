"""Datastore settings from the environment, read exactly as the NVSentinel services read them.

:meth:`Settings.from_env` is the one place that reads and validates the
``DATASTORE_*`` variables; everything else takes a :class:`Settings`. Every bad
setting raises :class:`~nvsentinel_store.errors.ConfigError` naming the
variable, its value and what is expected.

Variables (empty values count as unset):

``DATASTORE_PROVIDER``
    ``postgresql`` or ``mongodb``; unset means ``mongodb`` (the chart's default).
``DATASTORE_HOST``, ``DATASTORE_DATABASE``
    Required.
``DATASTORE_USERNAME``
    Required for PostgreSQL. For MongoDB with a client certificate it may be
    left unset: the server takes the user from the certificate's subject.
``DATASTORE_PORT``
    1-65535, decimal digits only; default 5432 (PostgreSQL) or 27017 (MongoDB).
``DATASTORE_PASSWORD``
    Optional. With a password and no certificate variable set, no client
    certificate is sent (password authentication, e.g. a managed PostgreSQL).
``DATASTORE_SSLMODE``
    ``disable``, ``require`` (TLS, no verification of the server), ``verify-ca``
    (the server's chain against ``sslrootcert``) or ``verify-full`` (also the
    host name); default ``verify-full``.
``DATASTORE_SSLCERT``, ``DATASTORE_SSLKEY``, ``DATASTORE_SSLROOTCERT``
    Default ``tls.crt``, ``tls.key`` and ``ca.crt`` in the certificate
    directory.
``POSTGRESQL_CLIENT_CERT_MOUNT_PATH``, ``MONGODB_CLIENT_CERT_MOUNT_PATH``
    The certificate directory (default ``/etc/nvsentinel/datastore-tls``). Both
    are honoured for either provider (the MongoDB name for backward
    compatibility); when both are set, the one named after the configured
    provider wins.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from psycopg.conninfo import make_conninfo

from nvsentinel_store.errors import ConfigError

Provider = Literal["postgresql", "mongodb"]
SslMode = Literal["disable", "require", "verify-ca", "verify-full"]

PROVIDERS: Final[tuple[Provider, ...]] = ("postgresql", "mongodb")
SSLMODES: Final[tuple[SslMode, ...]] = ("disable", "require", "verify-ca", "verify-full")
DEFAULT_PROVIDER: Final[Provider] = "mongodb"
DEFAULT_SSLMODE: Final[SslMode] = "verify-full"
DEFAULT_PORTS: Final[Mapping[Provider, int]] = {"postgresql": 5432, "mongodb": 27017}
DEFAULT_CERT_MOUNT_PATH: Final = "/etc/nvsentinel/datastore-tls"
CERT_FILE: Final = "tls.crt"
KEY_FILE: Final = "tls.key"
CA_FILE: Final = "ca.crt"
DEFAULT_APPLICATION_NAME: Final = "nvsentinel-store"
DEFAULT_CONNECT_TIMEOUT: Final = 10

_DIGITS: Final = re.compile(r"[0-9]+")

_MOUNT_VARS: Final[Mapping[Provider, str]] = {
    "postgresql": "POSTGRESQL_CLIENT_CERT_MOUNT_PATH",
    "mongodb": "MONGODB_CLIENT_CERT_MOUNT_PATH",
}


@dataclass(frozen=True)
class TlsFile:
    """A certificate or key path and the setting it came from (for error messages)."""

    path: Path
    source: str

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Settings:
    """How to reach the datastore. Build it once with :meth:`from_env` and pass it in."""

    provider: Provider
    host: str
    port: int
    database: str
    username: str | None
    password: str | None
    sslmode: SslMode
    sslcert: TlsFile | None
    sslkey: TlsFile | None
    sslrootcert: TlsFile | None
    application_name: str = DEFAULT_APPLICATION_NAME
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT

    def __repr__(self) -> str:
        # Never print the password.
        shown = "***" if self.password else None
        return (
            f"Settings(provider={self.provider!r}, host={self.host!r}, port={self.port}, "
            f"database={self.database!r}, username={self.username!r}, password={shown!r}, "
            f"sslmode={self.sslmode!r}, sslcert={_p(self.sslcert)}, sslkey={_p(self.sslkey)}, "
            f"sslrootcert={_p(self.sslrootcert)})"
        )

    @property
    def uses_client_certificate(self) -> bool:
        return self.sslcert is not None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        application_name: str = DEFAULT_APPLICATION_NAME,
        check_files: bool = True,
    ) -> Settings:
        """Read and validate the ``DATASTORE_*`` variables in ``env`` (e.g. ``os.environ``).

        With ``check_files`` (the default) every certificate file the settings
        use must exist and the key must not be readable by group or others.
        """
        values = {k: v for k, v in env.items() if v != ""}

        provider = _provider(values)
        host = _required(values, "DATASTORE_HOST", "the datastore's host name")
        database = _required(values, "DATASTORE_DATABASE", "the database name")
        username = values.get("DATASTORE_USERNAME")
        if username is None and provider == "postgresql":
            raise ConfigError(
                "DATASTORE_USERNAME is not set; PostgreSQL needs the database user "
                "(the client certificate's CN, e.g. nvsentinel)"
            )
        port = _port(values, provider)
        password = values.get("DATASTORE_PASSWORD")
        if password is not None and username is None:
            raise ConfigError(
                "DATASTORE_PASSWORD is set but DATASTORE_USERNAME is not; "
                "password authentication needs the user name"
            )
        sslmode = _sslmode(values)

        sslcert = sslkey = sslrootcert = None
        if sslmode != "disable":
            mount = _mount_path(values, provider)
            wants_cert = (
                password is None
                or "DATASTORE_SSLCERT" in values
                or "DATASTORE_SSLKEY" in values
                or any(var in values for var in _MOUNT_VARS.values())
            )
            if wants_cert:
                sslcert = _tls_file(values, "DATASTORE_SSLCERT", mount, CERT_FILE)
                sslkey = _tls_file(values, "DATASTORE_SSLKEY", mount, KEY_FILE)
            # Under `require` the server is not verified: a CA file is used only
            # when named explicitly (libpq then checks the chain, as verify-ca).
            if sslmode != "require" or "DATASTORE_SSLROOTCERT" in values:
                sslrootcert = _tls_file(values, "DATASTORE_SSLROOTCERT", mount, CA_FILE)

        settings = cls(
            provider=provider,
            host=host,
            port=port,
            database=database,
            username=username,
            password=password,
            sslmode=sslmode,
            sslcert=sslcert,
            sslkey=sslkey,
            sslrootcert=sslrootcert,
            application_name=application_name,
        )
        if check_files:
            settings.check_files()
        return settings

    def check_files(self) -> None:
        """Raise :class:`ConfigError` if a certificate file is missing or the key is exposed."""
        for what, tls_file in (
            ("client certificate", self.sslcert),
            ("client key", self.sslkey),
            ("CA certificate", self.sslrootcert),
        ):
            if tls_file is None:
                continue
            if not tls_file.path.is_file():
                raise ConfigError(
                    f"{what} {tls_file.path} does not exist (from {tls_file.source}); "
                    "mount the client certificate Secret there or point the variable at the file"
                )
        if self.sslkey is not None:
            check_key_permissions(self.sslkey)


def _p(tls_file: TlsFile | None) -> str:
    return repr(str(tls_file.path)) if tls_file else "None"


def _provider(values: Mapping[str, str]) -> Provider:
    raw = values.get("DATASTORE_PROVIDER", DEFAULT_PROVIDER)
    if raw not in PROVIDERS:
        raise ConfigError(
            f"DATASTORE_PROVIDER={raw!r} is not a datastore provider; "
            f"expected one of: {', '.join(PROVIDERS)}"
        )
    return raw


def _required(values: Mapping[str, str], name: str, what: str) -> str:
    value = values.get(name)
    if value is None:
        raise ConfigError(f"{name} is not set; it must name {what}")
    return value


def _port(values: Mapping[str, str], provider: Provider) -> int:
    raw = values.get("DATASTORE_PORT")
    if raw is None:
        return DEFAULT_PORTS[provider]
    # Plain ASCII digits only: int() would also take "5_5434", " 5432", "+5432"
    # and other scripts' digits, which libpq and the services do not.
    if _DIGITS.fullmatch(raw) is None:
        raise ConfigError(
            f"DATASTORE_PORT={raw!r} is not a port number; expected an integer from 1 to 65535 "
            "(decimal digits only)"
        )
    port = int(raw, 10)
    if not 1 <= port <= 65535:
        raise ConfigError(f"DATASTORE_PORT={raw!r} is out of range; expected 1 to 65535")
    return port


def _sslmode(values: Mapping[str, str]) -> SslMode:
    raw = values.get("DATASTORE_SSLMODE", DEFAULT_SSLMODE)
    if raw not in SSLMODES:
        raise ConfigError(
            f"DATASTORE_SSLMODE={raw!r} is not an SSL mode; expected one of: {', '.join(SSLMODES)}"
        )
    return raw


def _mount_path(values: Mapping[str, str], provider: Provider) -> TlsFile:
    """The certificate directory: the provider's own variable, then the other's, then default."""
    own = _MOUNT_VARS[provider]
    other = _MOUNT_VARS["mongodb" if provider == "postgresql" else "postgresql"]
    for var in (own, other):
        if var in values:
            return TlsFile(Path(values[var]), f"{var}={values[var]}")
    return TlsFile(
        Path(DEFAULT_CERT_MOUNT_PATH), f"the default directory {DEFAULT_CERT_MOUNT_PATH}"
    )


def _tls_file(values: Mapping[str, str], var: str, mount: TlsFile, default_name: str) -> TlsFile:
    if var in values:
        return TlsFile(Path(values[var]), f"{var}={values[var]}")
    return TlsFile(mount.path / default_name, f"{mount.source} + {default_name}, {var} unset")


def check_key_permissions(key: TlsFile) -> None:
    """Refuse a private key readable by group or others, by libpq's rule.

    Owned by the current user (or anyone but root): mode 0600 or less. Owned by
    root: 0640 or less (group read allowed, for keys shared through a group).
    """
    st = key.path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == 0 and os.geteuid() != 0:
        exposed = mode & 0o037
        allowed = "u=rw,g=r (0640) or less when owned by root"
    else:
        exposed = mode & 0o077
        allowed = "u=rw (0600) or less"
    if exposed:
        raise ConfigError(
            f"client key {key.path} (from {key.source}) has group or world access "
            f"(mode {mode:04o}); it must have permissions {allowed}: chmod 0600 {key.path}"
        )


def postgres_conninfo(settings: Settings, **overrides: str) -> str:
    """A libpq connection string for ``psycopg.connect`` or a psycopg_pool pool.

    ``overrides`` are further libpq keywords (e.g. ``hostaddr``) that replace or
    add to those from the settings.
    """
    return make_conninfo(**{**postgres_params(settings), **overrides})


def postgres_params(settings: Settings) -> dict[str, str]:
    """The libpq keywords the settings give (host, port, dbname, user, ssl*, ...)."""
    if settings.provider != "postgresql":
        raise ConfigError(
            f"DATASTORE_PROVIDER={settings.provider!r}: a PostgreSQL connection needs "
            "DATASTORE_PROVIDER=postgresql"
        )
    params: dict[str, str] = {
        "host": settings.host,
        "port": str(settings.port),
        "dbname": settings.database,
        "sslmode": settings.sslmode,
        "application_name": settings.application_name,
        "connect_timeout": str(settings.connect_timeout),
    }
    if settings.username is not None:
        params["user"] = settings.username
    if settings.password is not None:
        params["password"] = settings.password
    for keyword, tls_file in (
        ("sslcert", settings.sslcert),
        ("sslkey", settings.sslkey),
        ("sslrootcert", settings.sslrootcert),
    ):
        if tls_file is not None:
            params[keyword] = str(tls_file.path)
    return params


def write_combined_pem(cert: Path, key: Path, directory: Path | None = None) -> Path:
    """Certificate and key in one PEM file (what pymongo's ``tlsCertificateKeyFile`` takes).

    Written with mode 0600 into ``directory``, or into a new private (0700)
    temporary directory; the caller removes it. pymongo reads the file once,
    when the client is created.
    """
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="nvsentinel-mongo-tls-"))
    path = directory / "client.pem"
    data = cert.read_bytes().rstrip(b"\n") + b"\n" + key.read_bytes()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def mongo_client_kwargs(
    settings: Settings,
    *,
    pem_directory: Path | None = None,
    replica_set: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``pymongo.MongoClient(**kwargs)``.

    With a client certificate, authentication is MONGODB-X509 and the
    certificate and key are combined into one private PEM file (see
    :func:`write_combined_pem`; ``pem_directory`` chooses where). Without
    ``replica_set`` the client talks to the one host given
    (``directConnection``); with it, it discovers the replica set's members.
    """
    if settings.provider != "mongodb":
        raise ConfigError(
            f"DATASTORE_PROVIDER={settings.provider!r}: a MongoDB client needs "
            "DATASTORE_PROVIDER=mongodb"
        )
    kwargs: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "appname": settings.application_name,
        "connectTimeoutMS": settings.connect_timeout * 1000,
        "serverSelectionTimeoutMS": settings.connect_timeout * 1000,
        "retryWrites": True,
        "retryReads": True,
    }
    if replica_set is None:
        kwargs["directConnection"] = True
    else:
        kwargs["replicaSet"] = replica_set
    if settings.sslmode == "disable":
        kwargs["tls"] = False
    else:
        kwargs["tls"] = True
        if settings.sslrootcert is not None:
            kwargs["tlsCAFile"] = str(settings.sslrootcert.path)
        if settings.sslmode == "require":
            kwargs["tlsAllowInvalidCertificates"] = True
            kwargs["tlsAllowInvalidHostnames"] = True
        elif settings.sslmode == "verify-ca":
            kwargs["tlsAllowInvalidHostnames"] = True
    if settings.sslcert is not None and settings.sslkey is not None:
        kwargs["tlsCertificateKeyFile"] = str(
            write_combined_pem(settings.sslcert.path, settings.sslkey.path, pem_directory)
        )
        if settings.password is None:
            kwargs["authMechanism"] = "MONGODB-X509"
            # The server takes the user from the certificate's subject DN.
            kwargs["authSource"] = "$external"
    if settings.password is not None:
        kwargs["username"] = settings.username
        kwargs["password"] = settings.password
        kwargs["authSource"] = settings.database
    return kwargs
