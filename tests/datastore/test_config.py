"""Settings from the environment: what the services accept, and what a wrong setting says."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nvsentinel_store.config import (
    Settings,
    mongo_client_kwargs,
    postgres_conninfo,
    postgres_params,
)
from nvsentinel_store.errors import ConfigError, StoreError

pytestmark = pytest.mark.datastore


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    """A directory laid out like the mounted client-cert Secret (contents need not parse)."""
    directory = tmp_path / "datastore-tls"
    directory.mkdir()
    (directory / "tls.crt").write_text(
        "-----BEGIN CERTIFICATE-----\ncert\n-----END CERTIFICATE-----\n"
    )
    (directory / "ca.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n"
    )
    key = directory / "tls.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    return directory


@pytest.fixture
def pg_env(cert_dir: Path) -> dict[str, str]:
    return {
        "DATASTORE_PROVIDER": "postgresql",
        "DATASTORE_HOST": "nvsentinel-postgresql.nvsentinel.svc.cluster.local",
        "DATASTORE_DATABASE": "nvsentinel",
        "DATASTORE_USERNAME": "nvsentinel",
        "DATASTORE_SSLMODE": "verify-full",
        "POSTGRESQL_CLIENT_CERT_MOUNT_PATH": str(cert_dir),
    }


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    return str(info.value)


# -- what is accepted ---------------------------------------------------------------


def test_chart_environment_gives_certificate_files_from_the_mount_path(
    pg_env: dict[str, str], cert_dir: Path
) -> None:
    settings = Settings.from_env(pg_env)
    assert settings.provider == "postgresql"
    assert settings.port == 5432
    assert settings.sslmode == "verify-full"
    assert settings.sslcert is not None and settings.sslcert.path == cert_dir / "tls.crt"
    assert settings.sslkey is not None and settings.sslkey.path == cert_dir / "tls.key"
    assert settings.sslrootcert is not None and settings.sslrootcert.path == cert_dir / "ca.crt"


def test_mongodb_port_defaults_to_27017(pg_env: dict[str, str]) -> None:
    pg_env["DATASTORE_PROVIDER"] = "mongodb"
    assert Settings.from_env(pg_env).port == 27017


def test_provider_defaults_to_mongodb_like_the_chart(pg_env: dict[str, str]) -> None:
    del pg_env["DATASTORE_PROVIDER"]
    assert Settings.from_env(pg_env).provider == "mongodb"


def test_empty_values_count_as_unset(pg_env: dict[str, str]) -> None:
    pg_env["DATASTORE_PORT"] = ""
    pg_env["DATASTORE_SSLCERT"] = ""
    settings = Settings.from_env(pg_env)
    assert settings.port == 5432
    assert settings.sslcert is not None and settings.sslcert.path.name == "tls.crt"


def test_explicit_certificate_variables_win_over_the_mount_path(
    pg_env: dict[str, str], tmp_path: Path
) -> None:
    other = tmp_path / "elsewhere.crt"
    other.write_text("x")
    pg_env["DATASTORE_SSLCERT"] = str(other)
    settings = Settings.from_env(pg_env)
    assert settings.sslcert is not None and settings.sslcert.path == other


def test_mongodb_mount_path_is_honoured_for_postgresql(
    pg_env: dict[str, str], cert_dir: Path
) -> None:
    del pg_env["POSTGRESQL_CLIENT_CERT_MOUNT_PATH"]
    pg_env["MONGODB_CLIENT_CERT_MOUNT_PATH"] = str(cert_dir)
    settings = Settings.from_env(pg_env)
    assert settings.sslcert is not None and settings.sslcert.path == cert_dir / "tls.crt"


def test_when_both_mount_paths_are_set_the_providers_own_wins(
    pg_env: dict[str, str], cert_dir: Path, tmp_path: Path
) -> None:
    pg_env["MONGODB_CLIENT_CERT_MOUNT_PATH"] = str(tmp_path / "does-not-exist")
    settings = Settings.from_env(pg_env)
    assert settings.sslcert is not None and settings.sslcert.path == cert_dir / "tls.crt"

    pg_env["DATASTORE_PROVIDER"] = "mongodb"
    pg_env["MONGODB_CLIENT_CERT_MOUNT_PATH"], pg_env["POSTGRESQL_CLIENT_CERT_MOUNT_PATH"] = (
        str(cert_dir),
        str(tmp_path / "does-not-exist"),
    )
    settings = Settings.from_env(pg_env)
    assert settings.sslcert is not None and settings.sslcert.path == cert_dir / "tls.crt"


def test_sslmode_disable_uses_no_certificate_files(pg_env: dict[str, str]) -> None:
    pg_env["DATASTORE_SSLMODE"] = "disable"
    pg_env["POSTGRESQL_CLIENT_CERT_MOUNT_PATH"] = "/nonexistent"
    settings = Settings.from_env(pg_env)
    assert (settings.sslcert, settings.sslkey, settings.sslrootcert) == (None, None, None)


def test_sslmode_require_does_not_verify_the_server_by_default(pg_env: dict[str, str]) -> None:
    pg_env["DATASTORE_SSLMODE"] = "require"
    settings = Settings.from_env(pg_env)
    assert settings.sslrootcert is None
    assert "sslrootcert" not in postgres_params(settings)


def test_password_without_certificate_variables_sends_no_client_certificate() -> None:
    settings = Settings.from_env(
        {
            "DATASTORE_PROVIDER": "postgresql",
            "DATASTORE_HOST": "db.example.internal",
            "DATASTORE_DATABASE": "nvsentinel",
            "DATASTORE_USERNAME": "nvsentinel",
            "DATASTORE_PASSWORD": "s3cret",
            "DATASTORE_SSLMODE": "require",
        }
    )
    params = postgres_params(settings)
    assert params["password"] == "s3cret"
    assert "sslcert" not in params and "sslkey" not in params


def test_password_is_never_shown_in_the_settings_repr(pg_env: dict[str, str]) -> None:
    pg_env["DATASTORE_PASSWORD"] = "s3cret-value"
    assert "s3cret-value" not in repr(Settings.from_env(pg_env))


def test_postgres_params_carry_every_libpq_setting(pg_env: dict[str, str], cert_dir: Path) -> None:
    pg_env["DATASTORE_PORT"] = "6432"
    params = postgres_params(Settings.from_env(pg_env, application_name="fault-quarantine"))
    assert params == {
        "host": "nvsentinel-postgresql.nvsentinel.svc.cluster.local",
        "port": "6432",
        "dbname": "nvsentinel",
        "user": "nvsentinel",
        "sslmode": "verify-full",
        "sslcert": str(cert_dir / "tls.crt"),
        "sslkey": str(cert_dir / "tls.key"),
        "sslrootcert": str(cert_dir / "ca.crt"),
        "application_name": "fault-quarantine",
        "connect_timeout": "10",
    }


def test_mongo_client_uses_x509_with_cert_and_key_in_one_private_file(
    pg_env: dict[str, str], cert_dir: Path, tmp_path: Path
) -> None:
    pg_env["DATASTORE_PROVIDER"] = "mongodb"
    del pg_env["DATASTORE_USERNAME"]
    pem_dir = tmp_path / "pem"
    pem_dir.mkdir()
    kwargs = mongo_client_kwargs(Settings.from_env(pg_env), pem_directory=pem_dir)
    assert kwargs["tls"] is True
    assert kwargs["authMechanism"] == "MONGODB-X509"
    assert kwargs["authSource"] == "$external"
    assert kwargs["tlsCAFile"] == str(cert_dir / "ca.crt")
    assert kwargs["directConnection"] is True
    assert "tlsAllowInvalidHostnames" not in kwargs
    combined = Path(kwargs["tlsCertificateKeyFile"])
    assert stat.S_IMODE(combined.stat().st_mode) == 0o600
    text = combined.read_text()
    assert "BEGIN CERTIFICATE" in text and "BEGIN PRIVATE KEY" in text


def test_mongo_verify_ca_skips_only_the_host_name_check(
    pg_env: dict[str, str], tmp_path: Path
) -> None:
    pg_env["DATASTORE_PROVIDER"] = "mongodb"
    pg_env["DATASTORE_SSLMODE"] = "verify-ca"
    kwargs = mongo_client_kwargs(Settings.from_env(pg_env), pem_directory=tmp_path)
    assert kwargs["tlsAllowInvalidHostnames"] is True
    assert "tlsAllowInvalidCertificates" not in kwargs


def test_mongo_replica_set_replaces_direct_connection(
    pg_env: dict[str, str], tmp_path: Path
) -> None:
    pg_env["DATASTORE_PROVIDER"] = "mongodb"
    kwargs = mongo_client_kwargs(
        Settings.from_env(pg_env), pem_directory=tmp_path, replica_set="rs0"
    )
    assert kwargs["replicaSet"] == "rs0"
    assert "directConnection" not in kwargs


# -- what a wrong setting says ------------------------------------------------------


def test_config_error_is_a_store_error() -> None:
    assert issubclass(ConfigError, StoreError)


def test_unknown_provider_names_the_value_and_the_choices(pg_env: dict[str, str]) -> None:
    pg_env["DATASTORE_PROVIDER"] = "postgres"
    message = config_error(pg_env)
    assert "DATASTORE_PROVIDER='postgres'" in message
    assert "postgresql, mongodb" in message


@pytest.mark.parametrize("value", ["abc", "5432.0", "0x10"])
def test_non_integer_port_is_refused(pg_env: dict[str, str], value: str) -> None:
    pg_env["DATASTORE_PORT"] = value
    message = config_error(pg_env)
    assert f"DATASTORE_PORT={value!r}" in message
    assert "integer from 1 to 65535" in message


@pytest.mark.parametrize(
    "value", ["5_5434", "-1", "+5432", " 5432", "5432 ", "\uff15\uff14\uff13\uff12"]
)
def test_port_that_is_not_plain_decimal_digits_is_refused(
    pg_env: dict[str, str], value: str
) -> None:
    """int() takes underscores, signs, blanks and other scripts' digits; a port may not."""
    pg_env["DATASTORE_PORT"] = value
    message = config_error(pg_env)
    assert f"DATASTORE_PORT={value!r} is not a port number" in message
    assert "integer from 1 to 65535 (decimal digits only)" in message


def test_port_with_leading_zeros_is_plain_digits_and_accepted(pg_env: dict[str, str]) -> None:
    pg_env["DATASTORE_PORT"] = "05434"
    assert Settings.from_env(pg_env).port == 5434


@pytest.mark.parametrize("value", ["0", "65536", "99999999999"])
def test_out_of_range_port_is_refused(pg_env: dict[str, str], value: str) -> None:
    pg_env["DATASTORE_PORT"] = value
    message = config_error(pg_env)
    assert f"DATASTORE_PORT={value!r} is out of range" in message
    assert "1 to 65535" in message


def test_unknown_sslmode_names_the_value_and_the_choices(pg_env: dict[str, str]) -> None:
    pg_env["DATASTORE_SSLMODE"] = "verify_full"
    message = config_error(pg_env)
    assert "DATASTORE_SSLMODE='verify_full'" in message
    assert "disable, require, verify-ca, verify-full" in message


@pytest.mark.parametrize(
    ("variable", "what"),
    [
        ("DATASTORE_HOST", "host name"),
        ("DATASTORE_DATABASE", "database name"),
        ("DATASTORE_USERNAME", "database user"),
    ],
)
def test_missing_required_setting_is_named(
    pg_env: dict[str, str], variable: str, what: str
) -> None:
    del pg_env[variable]
    message = config_error(pg_env)
    assert f"{variable} is not set" in message
    assert what in message


def test_password_without_username_is_refused(pg_env: dict[str, str]) -> None:
    pg_env["DATASTORE_PROVIDER"] = "mongodb"
    del pg_env["DATASTORE_USERNAME"]
    pg_env["DATASTORE_PASSWORD"] = "x"
    assert "DATASTORE_USERNAME is not" in config_error(pg_env)


def test_missing_certificate_names_its_path_and_the_mount_variable(
    pg_env: dict[str, str], cert_dir: Path
) -> None:
    (cert_dir / "tls.crt").unlink()
    message = config_error(pg_env)
    assert f"client certificate {cert_dir / 'tls.crt'} does not exist" in message
    assert f"POSTGRESQL_CLIENT_CERT_MOUNT_PATH={cert_dir}" in message


def test_missing_ca_named_by_variable_says_which_variable(
    pg_env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-ca.crt"
    pg_env["DATASTORE_SSLROOTCERT"] = str(missing)
    message = config_error(pg_env)
    assert f"CA certificate {missing} does not exist" in message
    assert f"DATASTORE_SSLROOTCERT={missing}" in message


def test_missing_certificate_under_the_default_directory_says_so(
    pg_env: dict[str, str],
) -> None:
    del pg_env["POSTGRESQL_CLIENT_CERT_MOUNT_PATH"]
    message = config_error(pg_env)
    assert "/etc/nvsentinel/datastore-tls/tls.crt does not exist" in message
    assert "the default directory /etc/nvsentinel/datastore-tls" in message


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_readable_by_group_or_others_is_refused_with_its_mode(
    pg_env: dict[str, str], cert_dir: Path, mode: int
) -> None:
    key = cert_dir / "tls.key"
    key.chmod(mode)
    assert key.stat().st_uid == os.geteuid()
    message = config_error(pg_env)
    assert f"client key {key}" in message
    assert f"mode {mode:04o}" in message
    assert "group or world access" in message
    assert "0600" in message


def test_check_files_false_defers_file_checks(pg_env: dict[str, str], cert_dir: Path) -> None:
    (cert_dir / "ca.crt").unlink()
    settings = Settings.from_env(pg_env, check_files=False)
    with pytest.raises(ConfigError, match=r"CA certificate .* does not exist"):
        settings.check_files()


def test_postgres_conninfo_is_a_libpq_string_with_overrides(pg_env: dict[str, str]) -> None:
    conninfo = postgres_conninfo(Settings.from_env(pg_env), hostaddr="127.0.0.1")
    assert "sslmode=verify-full" in conninfo
    assert "hostaddr=127.0.0.1" in conninfo
    assert "user=nvsentinel" in conninfo


def test_postgres_conninfo_refuses_mongodb_settings(pg_env: dict[str, str]) -> None:
    pg_env["DATASTORE_PROVIDER"] = "mongodb"
    with pytest.raises(ConfigError, match="DATASTORE_PROVIDER=postgresql"):
        postgres_conninfo(Settings.from_env(pg_env))
