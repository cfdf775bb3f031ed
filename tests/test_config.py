"""Configuration loading: the shipped files validate, and every error names its location."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PASSWORD_HASH, ROOT, config_data

from relay.config import ConfigError, parse_config
from relay.configfile import load_config
from relay.passwords import hash_password

CLI = [sys.executable, "-m", "relay"]


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    return error.value.problems


@pytest.fixture
def valid(sqlite_url, tls_files):
    return config_data(store_url=sqlite_url, upstream_port=2526, tls_files=tls_files)


@pytest.mark.parametrize("name", ["relay.example.yaml", "dev.yaml"])
def test_shipped_configs_validate(name):
    """config/relay.example.yaml and config/dev.yaml load as they are."""
    config = load_config(ROOT / "config" / name)
    assert config.accounts
    assert "from_domain" in config.policies


def test_example_documents_every_top_level_key():
    """The example file sets every top-level key of the operator contract."""
    text = (ROOT / "config" / "relay.example.yaml").read_text()
    data = yaml.safe_load(text)
    for key in ("hostname", "smtp", "upstream", "inbound", "storage", "web", "tokens"):
        assert key in data
    for key in ("accounts", "policies", "delivery"):
        assert key in data


def test_relative_paths_resolve_against_config_folder(tmp_path, tls_files):
    """sqlite:///var/x.db and TLS paths are relative to the config file, not the cwd."""
    data = config_data(store_url="sqlite:///var/relay.db", upstream_port=25, tls_files=tls_files)
    data["smtp"]["tls"] = {"certificate": "tls/c.pem", "private_key": "tls/k.pem"}
    config = load_config(write(tmp_path, data))
    assert config.storage.url == f"sqlite:///{tmp_path.resolve()}/var/relay.db"
    assert config.smtp.tls is not None
    assert config.smtp.tls.certificate == tmp_path.resolve() / "tls" / "c.pem"


def test_error_names_list_index_and_field(valid):
    """A bad field in the second account is reported as accounts[1].from_domains."""
    valid["accounts"][1]["from_domains"] = ["not a domain"]
    assert problems(valid) == ["accounts[1].from_domains[0]: not a valid domain: 'not a domain'"]


def test_every_problem_is_reported(valid):
    """All errors come at once, each with its location."""
    valid["accounts"][0]["password_hash"] = "plaintext"
    del valid["upstream"]["host"]
    valid["smtp"]["max_recipients"] = 50
    valid["policies"] = {"from_domain": {"allow_subdomains": "maybe"}, "no_such_policy": {}}
    found = problems(valid)
    assert any(p.startswith("accounts[0].password_hash: expected a hash") for p in found)
    assert "upstream.host: Field required" in found
    assert any(
        p.startswith("smtp.max_recipients: Input should be greater than or equal to 100")
        for p in found
    )
    assert any(p.startswith("policies.from_domain.allow_subdomains:") for p in found)
    assert any(p.startswith("policies.no_such_policy: ") for p in found)


def test_unknown_keys_are_errors(valid):
    """A typo is an error, not silently ignored."""
    valid["smtp"]["max_recipient"] = 100
    assert problems(valid) == ["smtp.max_recipient: Extra inputs are not permitted"]


@pytest.mark.parametrize(
    ("listener", "message"),
    [
        ({"address": "0.0.0.0:25", "tls": "none", "allow_insecure_auth": True}, "loopback"),
        ({"address": "192.0.2.1:25", "trusted_account": "acme"}, "loopback"),
        ({"address": "no-port", "tls": "none"}, "host:port"),
    ],
)
def test_listener_safety(valid, listener, message):
    """Plaintext AUTH and trusted accounts are refused on non-loopback addresses."""
    valid["smtp"]["listeners"] = [listener]
    (problem,) = problems(valid)
    assert problem.startswith("smtp.listeners[0]")
    assert message in problem


def test_cross_checks(valid):
    """Duplicate accounts and unknown trusted accounts are caught."""
    valid["accounts"].append(dict(valid["accounts"][0]))
    assert problems(valid) == ["(top level): accounts: duplicate id: acme"]


def test_duplicate_usernames_are_named_once_each(valid):
    """Every duplicated username is named once, in order, however often it repeats."""
    first = valid["accounts"][0]
    valid["accounts"] = [
        {**first, "id": f"a{n}", "username": name}
        for n, name in enumerate(["zed", "ann", "zed", "bob", "ann", "zed"])
    ]
    assert problems(valid) == ["(top level): accounts: duplicate username: ann, zed"]


def test_accounts_are_found_by_id_username_and_from_domain(valid):
    """Lookups by id, SMTP username and From domain; a domain two accounts declare is the first's.

    A copy of the configuration with other accounts finds those, not the original's.
    """
    first = valid["accounts"][0]
    valid["accounts"] = [
        {**first, "id": f"a{n}", "username": f"user{n}", "from_domains": [f"d{n}.example"]}
        for n in range(500)
    ]
    valid["accounts"][7]["from_domains"] = ["d7.example", "shared.example"]
    valid["accounts"][9]["from_domains"] = ["shared.example", "d9.example"]
    config = parse_config(valid)
    assert config.account("a499") is config.accounts[499]
    assert config.account("a500") is None
    assert config.account_by_username("user42") is config.accounts[42]
    assert config.account_by_username("a42") is None
    assert config.account_for_domain("d9.example") is config.accounts[9]
    assert config.account_for_domain("shared.example") is config.accounts[7]
    assert config.account_for_domain("nobody.example") is None
    other = parse_config({**valid, "accounts": [{**first, "id": "zz", "username": "zz"}]})
    copy = config.model_copy(update={"accounts": other.accounts})
    assert copy.account("zz") is other.accounts[0]
    assert copy.account("a1") is None
    assert config.account("a1") is config.accounts[1]


def test_durations_and_sizes(valid):
    """Durations and sizes accept units."""
    valid["delivery"] = {"retry_schedule": ["30s", "15m", "2h"], "max_age": "3d"}
    valid["smtp"]["max_message_size"] = "10MB"
    config = parse_config(valid)
    assert config.delivery.retry_schedule == [30, 900, 7200]
    assert config.delivery.max_age == 3 * 86400
    assert config.smtp.max_message_size == 10 * 1024 * 1024


def test_secrets_are_not_printed(valid):
    """The upstream password never appears in the config's repr."""
    valid["upstream"].update(username="relay", password="hunter2-upstream")
    config = parse_config(valid)
    assert "hunter2-upstream" not in repr(config)
    assert config.upstream.password is not None
    assert config.upstream.password.get_secret_value() == "hunter2-upstream"


def test_check_config_exit_78_with_location(tmp_path, valid):
    """`check-config` prints each problem with its location and exits 78."""
    valid["accounts"][1]["from_domains"] = []
    path = write(tmp_path, valid)
    result = subprocess.run(
        [*CLI, "check-config", "--config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 78
    assert "accounts[1].from_domains: List should have at least 1 item" in result.stderr


def test_check_config_ok(tmp_path, valid):
    """A valid file: exit 0."""
    path = write(tmp_path, valid)
    result = subprocess.run(
        [*CLI, "check-config", "--config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_config_warns_of_a_webhook_that_can_never_be_called(tmp_path, valid):
    """A literal private address without `webhooks.allow_private`: a warning naming it, exit 0.

    A host name is not looked up (its addresses are checked at each delivery round).
    """
    valid["accounts"][0]["webhooks"] = [
        {"url": "https://hooks.crm.example/relay", "secret": "whsec_" + "A" * 32},
        {"url": "http://[::a9fe:a9fe]/latest/meta-data", "secret": "whsec_" + "A" * 32},
    ]
    path = write(tmp_path, valid)
    result = subprocess.run(
        [*CLI, "check-config", "--config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "webhooks" in line]
    assert warned == [
        (
            "warning: accounts[0].webhooks[1].url: ::a9fe:a9fe is a private or reserved address"
            " and webhooks.allow_private is off: the relay will never call it"
        )
    ]
    valid["webhooks"] = {"allow_private": True}
    path = write(tmp_path, valid)
    result = subprocess.run(
        [*CLI, "check-config", "--config", str(path)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, "webhooks" in result.stderr) == (0, False)


def test_check_config_yaml_syntax_error_has_line(tmp_path):
    """Broken YAML is reported with file, line and column."""
    path = write(tmp_path, "hostname: relay.example\nsmtp: [unclosed\n")
    result = subprocess.run(
        [*CLI, "check-config", "--config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 78
    assert f"{path}:3:1: not valid YAML" in result.stderr


def test_check_config_missing_tls_file(tmp_path, valid):
    """An unreadable certificate is a config error naming smtp.tls."""
    valid["smtp"]["tls"]["certificate"] = str(tmp_path / "missing.pem")
    path = write(tmp_path, valid)
    result = subprocess.run(
        [*CLI, "check-config", "--config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 78
    assert "smtp.tls: cannot load the certificate or key" in result.stderr


def test_serve_refuses_bad_config(tmp_path, valid):
    """`serve` exits 78 on a bad file, before opening any socket."""
    valid["hostname"] = "not a hostname"
    path = write(tmp_path, valid)
    result = subprocess.run(
        [*CLI, "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78
    assert "config_invalid" in result.stdout
    assert "hostname" in result.stdout


def test_config_from_environment(tmp_path, valid):
    """Without --config, $OPTIN_RELAY_CONFIG names the file."""
    path = write(tmp_path, valid)
    env = {"OPTIN_RELAY_CONFIG": str(path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [*CLI, "check-config"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr


def test_password_hash_field_accepts_cli_output():
    """A hash made by hash-password is accepted as an account's password_hash."""
    assert PASSWORD_HASH.startswith("$argon2id$")


def test_credential_hashes_take_a_list_while_rotating(valid):
    """password_hash, api_key_hash and admin_token_hash take one hash or a list of them."""
    other = hash_password("the-next-secret-1234")
    valid["accounts"][0]["password_hash"] = [other, PASSWORD_HASH]
    valid["accounts"][0]["api_key_hash"] = PASSWORD_HASH
    valid["web"]["admin_token_hash"] = [PASSWORD_HASH]
    config = parse_config(valid)
    assert config.accounts[0].password_hash == (other, PASSWORD_HASH)
    assert config.accounts[0].api_key_hash == (PASSWORD_HASH,)
    assert config.accounts[1].password_hash == (PASSWORD_HASH,)
    assert config.web.admin_token_hash == (PASSWORD_HASH,)
    valid["accounts"][0]["password_hash"] = [PASSWORD_HASH, "plaintext"]
    valid["accounts"][1]["password_hash"] = []
    valid["web"]["admin_token_hash"] = "plaintext"
    assert sorted(p.split(" (")[0] for p in problems(valid)) == [
        "accounts[0].password_hash: expected a hash made by `optin-relay hash-password`",
        (
            "accounts[1].password_hash: expected a hash made by `optin-relay hash-password`, "
            "or a list of them"
        ),
        "web.admin_token_hash: expected a hash made by `optin-relay hash-password`",
    ]


def split_accounts(tmp_path: Path, valid: dict) -> tuple[Path, Path]:
    """The main file with `include: accounts.d/*.yaml`, one file per account."""
    folder = tmp_path / "accounts.d"
    folder.mkdir()
    for account in valid.pop("accounts"):
        (folder / f"{account['id']}.yaml").write_text(yaml.safe_dump(account, sort_keys=False))
    valid["include"] = ["accounts.d/*.yaml"]
    return write(tmp_path, valid), folder


def test_include_reads_one_file_per_account(tmp_path, valid):
    """`include:` adds each matching file's account, in name order."""
    path, folder = split_accounts(tmp_path, valid)
    config = load_config(path)
    assert [a.id for a in config.accounts] == ["acme", "globex"]
    result = subprocess.run(
        [*CLI, "check-config", "--config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "(2 accounts, 1 listeners)" in result.stdout
    (folder / "globex.yaml").unlink()
    absolute = write(tmp_path, {**valid, "include": [str(folder / "*.yaml")]})
    assert [a.id for a in load_config(absolute).accounts] == ["acme"]


def test_include_errors_name_the_file_and_line(tmp_path, valid):
    """A broken account file: check-config exits 78 naming that file and the line."""
    path, folder = split_accounts(tmp_path, valid)
    broken = folder / "globex.yaml"
    lines = broken.read_text().splitlines()
    at = next(n for n, line in enumerate(lines, 1) if line.startswith("from_domains:"))
    broken.write_text(
        "\n".join(
            "from_domains: []" if line.startswith("from_domains:") else line
            for line in lines
            if not line.startswith("- ")
        )
        + "\n"
    )
    result = subprocess.run(
        [*CLI, "check-config", "--config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 78
    assert f"{broken}:{at}: accounts[1].from_domains: List should have at least 1 item" in (
        result.stderr
    )
    (folder / "syntax.yaml").write_text("id: x\nfrom_domains: [unclosed\n")
    result = subprocess.run(
        [*CLI, "check-config", "--config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 78
    assert f"{folder / 'syntax.yaml'}:3:1: not valid YAML" in result.stderr


def test_errors_in_the_main_file_name_its_line(tmp_path, valid):
    """Each problem is prefixed with FILE:LINE of the key it is about."""
    valid["delivery"] = {"batch": -1}
    path = write(tmp_path, valid)
    text = path.read_text().splitlines()
    at = next(n for n, line in enumerate(text, 1) if line.strip().startswith("batch:"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(p.startswith(f"{path}:{at}: delivery.batch:") for p in caught.value.problems)


def test_check_config_fails_when_the_relays_own_mail_cannot_be_signed(tmp_path, valid):
    """Case notices from abuse@ the inbound domain need a DKIM key for that domain."""
    valid["dkim"] = [k for k in valid["dkim"] if k["domain"] != "relay.test.example"]
    path = write(tmp_path, valid)
    result = subprocess.run(
        [*CLI, "check-config", "--config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 78
    assert (
        "feedback.notice_from: case notices are sent from abuse@relay.test.example, but no"
        " dkim[] key has domain relay.test.example"
    ) in result.stderr
    valid["policies"] = {"dkim": {"missing_key": "relay_unsigned"}}
    path = write(tmp_path, valid)
    result = subprocess.run(
        [*CLI, "check-config", "--config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("?pooler=pgbouncer&schema=relay", "a pooler in transaction mode does not keep"),
        ("?pooler=odyssey", "unknown pooler 'odyssey'"),
        ("?schema=bad-name", "invalid schema name"),
    ],
)
def test_storage_url_parameters_are_checked(valid, query, problem):
    """The relay's own URL parameters are refused at load, not at the first connection."""
    valid["storage"]["url"] = "postgresql://relay@db1:5432,db2:5432/relay" + query
    with pytest.raises(ConfigError, match=problem):
        parse_config(valid)
    valid["storage"]["url"] = "postgresql://relay@db/relay?pooler=pgbouncer"
    assert parse_config(valid).storage.url.endswith("?pooler=pgbouncer")
