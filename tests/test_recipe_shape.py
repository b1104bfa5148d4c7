"""Real-shaped recipes, the pure parts: the env read strictly, abra.sh versions, the compose
checks made before anything deploys, the update monitor of multi-file recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ccci_tasks.errors import InvalidInput
from ccci_tasks.platform.app_secrets import ALPHABET, generate
from ccci_tasks.platform.compose_files import check_stack, load_compose
from ccci_tasks.platform.envfile import parse_env
from ccci_tasks.platform.recipe_env import read_abra_sh, read_recipe_env
from ccci_tasks.platform.render import monitor_defaults, render_compose

SAMPLE = """\
TYPE=notes
# a comment
COMPOSE_FILE="compose.yml"
COMPOSE_FILE="$COMPOSE_FILE:compose.db.yml"   # the database
SECRET_DB_PASSWORD_VERSION=v1 # length=40
SECRET_API_KEY_VERSION=v2
CCCI_DB_PORT=
CCCI_CACHE_PORT=
OAUTH_ISSUER=https://${DOMAIN}
DOMAIN=notes.example.com
"""


def test_env_declares_compose_files_secrets_and_ports() -> None:
    """COMPOSE_FILE built over two lines, secrets with and without a length, port keys."""
    env = read_recipe_env(SAMPLE, ".env.sample")
    assert env.compose_files == ("compose.yml", "compose.db.yml")
    assert env.compose_line == 4
    assert [(s.key, s.name, s.version, s.length, s.line) for s in env.secrets] == [
        ("SECRET_DB_PASSWORD_VERSION", "db_password", "v1", 40, 5),
        ("SECRET_API_KEY_VERSION", "api_key", "v2", 32, 6)]
    assert env.port_keys == ("CCCI_HTTP_PORT", "CCCI_DB_PORT", "CCCI_CACHE_PORT")
    assert env.secret("SECRET_DB_PASSWORD_VERSION") is env.secrets[0]
    assert env.secrets[0].docker_name("s_ci") == "s_ci_db_password_v1"
    assert env.secrets[0].docker_name("s_ci", "v3") == "s_ci_db_password_v3"


def test_expansion_sees_earlier_lines_only() -> None:
    """$VAR expands with keys set on earlier lines; single quotes stay literal."""
    values = parse_env(SAMPLE + "A='$DOMAIN'\nB=\"$DOMAIN\"\n", expand=True)
    assert values["OAUTH_ISSUER"] == "https://"  # DOMAIN comes later
    assert values["A"] == "$DOMAIN" and values["B"] == "notes.example.com"
    assert parse_env("X=a$Y\n")["X"] == "a$Y"  # without expand: as written


def test_default_compose_file() -> None:
    """No COMPOSE_FILE: compose.yml."""
    env = read_recipe_env("TYPE=x\n", "x")
    assert env.compose_files == ("compose.yml",) and env.compose_line is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("this is not an assignment", r"line 2: not a KEY=VALUE line"),
        ("SECRET_DB_VERSION=", r"line 2: SECRET_DB_VERSION must be a version word"),
        ("SECRET_DB_VERSION=v1 # length=abc", r"line 2: '# length=N' needs a whole number.*'abc'"),
        ("SECRET_DB_VERSION=v1 # length=0", r"line 2: '# length=N'"),
        ("SECRET_DB_VERSION=v1 # length 20", r"line 2: write the secret's length as"),
        ("SECRET_DB_VERSION=$(id)", r"line 2: SECRET_DB_VERSION must be a version word"),
        ("COMPOSE_FILE=compose.yml:../x.yml", r"line 2: COMPOSE_FILE entry '../x.yml'"),
        ("CCCI_DB_PORT=five", r"line 2: CCCI_DB_PORT is a port"),
    ],
)
def test_malformed_lines_are_refused_naming_file_and_line(line: str, expected: str) -> None:
    """Each malformed line is refused with the file, the line number and the line."""
    with pytest.raises(InvalidInput, match=r"^notes 1\.0\.0\+1\.0: \.env\.sample " + expected):
        read_recipe_env(f"TYPE=notes\n{line}\n", "notes 1.0.0+1.0: .env.sample")


def test_abra_sh_versions() -> None:
    """Only `export <NAME>_VERSION=<word>` lines are read; functions and other exports are
    ignored; a computed version is refused naming the line."""
    script = ("export APP_ENTRYPOINT_VERSION=v2\nexport PG_BACKUP_VERSION=\"v4\" # note\n"
              "export OTHER=1\nfoo() {\n  echo hi\n}\n")
    assert read_abra_sh(script, "abra.sh") == {"APP_ENTRYPOINT_VERSION": "v2",
                                               "PG_BACKUP_VERSION": "v4"}
    with pytest.raises(InvalidInput, match=r"abra.sh line 2: X_VERSION must be a plain"):
        read_abra_sh("# hi\nexport X_VERSION=$(date)\n", "abra.sh")


def test_generated_values_are_url_safe_of_the_declared_length() -> None:
    """Generated secret values have exactly the length asked and only url-safe characters."""
    values = {generate(40) for _ in range(20)}
    assert len(values) == 20
    assert all(len(v) == 40 and set(v) <= set(ALPHABET) for v in values)


# --------------------------------------------------------------------------- compose checks

APP = """\
version: "3.8"
services:
  app:
    image: x
    secrets:
      - db_password
    configs:
      - source: entry
        target: /entry.sh
configs:
  entry:
    name: ${STACK_NAME}_entry_${ENTRY_VERSION}
    file: entry.sh
"""
DB = """\
version: "3.8"
services:
  db:
    image: x
    secrets: [db_password]
secrets:
  db_password:
    external: true
    name: ${STACK_NAME}_db_password_${SECRET_DB_PASSWORD_VERSION}
"""


def _tree(tmp_path: Path, app: str = APP, db: str = DB) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir(parents=True)
    (tree / "compose.yml").write_text(app)
    (tree / "compose.db.yml").write_text(db)
    (tree / "entry.sh").write_text("#!/bin/sh\n")
    return tree


def _check(tree: Path, sample: str = SAMPLE, **env: str) -> list[str]:
    declared = read_recipe_env(sample, ".env.sample")
    files = [load_compose(tree, n) for n in ("compose.yml", "compose.db.yml")]
    full = {**declared.values, "STACK_NAME": "s_ci", "ENTRY_VERSION": "v1", **env}
    return [n.docker_name for n in check_stack(files, env=full, declared=declared,
                                               stack="s_ci", tree=tree)]


def test_a_well_formed_stack_needs_its_declared_secret(tmp_path: Path) -> None:
    """The external secret named the Co-op Cloud way is the one to create; an abra.sh
    version of it wins; a version variable with a default may be unset."""
    tree = _tree(tmp_path)
    assert _check(tree) == ["s_ci_db_password_v1"]
    assert _check(tree, SECRET_DB_PASSWORD_VERSION="v7") == ["s_ci_db_password_v7"]
    defaulted = _tree(tmp_path / "d", APP.replace("${ENTRY_VERSION}", "${ENTRY_V_VERSION:-v1}"),
                      DB.replace("${SECRET_DB_PASSWORD_VERSION}",
                                 "${SECRET_DB_PASSWORD_VERSION:-v1}"))
    assert _check(defaulted) == ["s_ci_db_password_v1"]


@pytest.mark.parametrize(
    ("app", "db", "expected"),
    [
        (APP, DB.replace("SECRET_DB_PASSWORD_VERSION", "SECRET_SMTP_VERSION"),
         r"compose.db.yml line 9: external secret 'db_password' .*\$\{SECRET_SMTP_VERSION\}, "
         r"which the app's env does not declare"),
        (APP, DB.replace("_${SECRET_DB_PASSWORD_VERSION}", "_fixed"),
         r"compose.db.yml line 9: .*no \$\{SECRET_<NAME>_VERSION\}"),
        (APP.replace("file: entry.sh", "file: ../../etc/passwd"), DB,
         r"compose.yml line 13: config file '../../etc/passwd' is outside the recipe"),
        (APP.replace("file: entry.sh", "file: /etc/passwd"), DB,
         r"compose.yml line 13: config file '/etc/passwd' is an absolute path"),
        (APP.replace("file: entry.sh", "file: gone.sh"), DB,
         r"compose.yml line 13: config file 'gone.sh' is not in the recipe"),
        (APP.replace("${ENTRY_VERSION}", "${NOPE_VERSION}"), DB,
         r"compose.yml line 12: config 'entry' is named with \$\{NOPE_VERSION\}"),
        (APP.replace("- db_password", "- api_token"), DB,
         r"compose.yml line 3: service app uses secret 'api_token', which no compose file"),
    ],
)
def test_bad_stacks_are_refused_naming_file_and_line(
    tmp_path: Path, app: str, db: str, expected: str
) -> None:
    """Undeclared secrets, files from outside the recipe, unset version variables and
    objects nobody declares are refused before anything deploys."""
    with pytest.raises(InvalidInput, match=expected):
        _check(_tree(tmp_path, app, db))


def test_symlink_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    """A config file that is a symlink leaving the recipe is refused."""
    tree = _tree(tmp_path)
    (tree / "entry.sh").unlink()
    (tree / "entry.sh").symlink_to("/etc/hostname")
    with pytest.raises(InvalidInput, match="outside the recipe"):
        _check(tree)


def test_missing_compose_file_names_it(tmp_path: Path) -> None:
    """A compose file COMPOSE_FILE names but the recipe lacks is refused by name."""
    with pytest.raises(InvalidInput, match=r"compose.smtp.yml is not in the recipe"):
        load_compose(_tree(tmp_path), "compose.smtp.yml")


def test_update_monitor_default_only_where_the_recipe_sets_none() -> None:
    """The default monitor goes into the first file declaring a service, and never where
    any file sets the service's own monitor (a partial service in a later file must not
    override it)."""
    first = yaml.safe_load("services:\n  app: {image: x}\n  db:\n    image: y\n"
                           "    deploy: {update_config: {monitor: 5s}}\n")
    second = yaml.safe_load("services:\n  app: {environment: [A=1]}\n  db: {}\n"
                            "  worker: {image: z}\n")
    assert monitor_defaults([first, second]) == [{"app"}, {"worker"}]
    out = [render_compose(c, stack="s", env={}, ccci_labels={}, app_labels={}, set_monitor=m)
           for c, m in zip([first, second], monitor_defaults([first, second]), strict=True)]
    assert out[0]["services"]["app"]["deploy"]["update_config"] == {"monitor": "1ms"}
    assert out[0]["services"]["db"]["deploy"]["update_config"] == {"monitor": "5s"}
    assert "update_config" not in out[1]["services"]["app"]["deploy"]
    assert out[1]["services"]["worker"]["deploy"]["update_config"] == {"monitor": "1ms"}
