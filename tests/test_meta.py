"""recipe_meta.py is parsed with ast, never executed; enrolment follows WARM_CANONICAL."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccci_tasks.errors import ConfigError, InvalidInput
from ccci_tasks.naming import Recipe
from ccci_tasks.state.meta import RecipeMeta, enrolled_recipes, load_meta

REPO = Path(__file__).resolve().parent.parent
APP = Recipe("app")


def _write(tests_dir: Path, recipe: str, text: str) -> Path:
    folder = tests_dir / recipe
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe_meta.py"
    path.write_text(text)
    return path


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    """A recipe without recipe_meta.py gets the documented defaults."""
    meta = load_meta(tmp_path, Recipe("nothing-here"))
    assert meta == RecipeMeta()
    assert meta.health_ok == (200, 301, 302)
    assert (meta.deploy_timeout, meta.http_timeout, meta.health_path) == (600, 300, "/")
    assert meta.deps == () and meta.warm_canonical is False
    assert meta.stateful is False


def test_example_recipe_meta_parses() -> None:
    """The shipped custom-html example is enrolled and parses to its values."""
    meta = load_meta(REPO / "examples" / "tests-recipes", Recipe("custom-html"))
    assert meta == RecipeMeta(True, "/", (200,), 120, 60, ())


def test_all_keys_parsed(tmp_path: Path) -> None:
    """Every key, a docstring, annotations and ignored lowercase/_private names are accepted."""
    _write(tmp_path, "app", '"""doc"""\nWARM_CANONICAL = True\nHEALTH_PATH: str = "/health"\n'
           "HEALTH_OK = (200, 302)\nDEPLOY_TIMEOUT = 90\nHTTP_TIMEOUT = 30\n"
           'DEPS = ["keycloak"]\nSTATEFUL = True\nhelper = open("/etc/passwd")\n'
           "_private = 1\n")
    assert load_meta(tmp_path, APP) == RecipeMeta(True, "/health", (200, 302), 90, 30,
                                                  (Recipe("keycloak"),), stateful=True)


def test_file_is_never_executed(tmp_path: Path) -> None:
    """Code in the file is refused, not run: the marker file is never created."""
    marker = tmp_path / "pwned"
    _write(tmp_path, "app", f"import os\nos.system('touch {marker}')\nWARM_CANONICAL = True\n")
    with pytest.raises(ConfigError, match="only top-level literal assignments"):
        load_meta(tmp_path, APP)
    assert not marker.exists()


def test_non_literal_value_refused(tmp_path: Path) -> None:
    """A value that is a call or a name is a ConfigError naming the key."""
    path = _write(tmp_path, "app", "DEPLOY_TIMEOUT = int('5')\n")
    with pytest.raises(ConfigError, match=r"DEPLOY_TIMEOUT.*must be a literal") as info:
        load_meta(tmp_path, APP)
    assert str(path) in str(info.value)


def test_unknown_key_did_you_mean(tmp_path: Path) -> None:
    """A misspelt key is refused with a did-you-mean hint and the file name."""
    path = _write(tmp_path, "app", "WARM_CANONICL = True\n")
    with pytest.raises(ConfigError, match=r"unknown key 'WARM_CANONICL'; did you mean "
                       r"'WARM_CANONICAL'\?") as info:
        load_meta(tmp_path, APP)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("WARM_CANONICAL = 1", "expected a bool"),
        ("HEALTH_PATH = 'health'", "expected a str"),
        ("HEALTH_OK = 200", "expected a non-empty list of int"),
        ("HEALTH_OK = []", "expected a non-empty list of int"),
        ("DEPLOY_TIMEOUT = '600'", "expected an int"),
        ("HTTP_TIMEOUT = -1", "expected an int"),
        ("DEPS = 'keycloak'", "expected a list of str"),
        ("DEPS = ['Key Cloak']", "expected a list of str"),
        ("STATEFUL = 1", "expected a bool"),
        ("STATEFUL = 'yes'", "expected a bool"),
        ("STATEFUL = None", "expected a bool"),
    ],
)
def test_wrong_type_names_file_key_and_type(tmp_path: Path, line: str, expected: str) -> None:
    """A wrong type names the file, the key and the expected type."""
    path = _write(tmp_path, "app", line + "\n")
    key = line.split(" ")[0]
    with pytest.raises(ConfigError) as info:
        load_meta(tmp_path, APP)
    text = str(info.value)
    assert str(path) in text and repr(key) in text and expected in text


@pytest.mark.parametrize(("text", "expected"), [("STATEFUL = True\n", True),
                                               ("STATEFUL = False\n", False), ("", False)])
def test_stateful_is_a_bool_defaulting_false(tmp_path: Path, text: str, expected: bool) -> None:
    """STATEFUL reads as a bool, False when absent; it enrols nothing in canonicals."""
    _write(tmp_path, "app", text)
    meta = load_meta(tmp_path, APP)
    assert meta.stateful is expected
    assert meta.warm_canonical is False
    assert enrolled_recipes(tmp_path) == []


def test_stateful_typo_suggests_the_key(tmp_path: Path) -> None:
    """A misspelt STATEFUL is refused with a did-you-mean hint."""
    _write(tmp_path, "app", "STATEFULL = True\n")
    with pytest.raises(ConfigError, match=r"did you mean 'STATEFUL'\?"):
        load_meta(tmp_path, APP)


def test_example_infra_metas_parse() -> None:
    """The keycloak stand-in is stateful, traefik is not; neither is a canonical."""
    tests_dir = REPO / "examples" / "tests-recipes"
    keycloak = load_meta(tests_dir, Recipe("keycloak"))
    traefik = load_meta(tests_dir, Recipe("traefik"))
    assert (keycloak.stateful, keycloak.health_path, keycloak.health_ok) == (
        True, "/health/ready", (200,))
    assert (traefik.stateful, traefik.health_path) == (False, "/ping")
    assert not keycloak.warm_canonical and not traefik.warm_canonical
    assert keycloak.deploy_timeout <= 120 and traefik.deploy_timeout <= 120
    assert "keycloak" not in enrolled_recipes(tests_dir)
    assert "traefik" not in enrolled_recipes(tests_dir)


def test_health_ok_404_refused(tmp_path: Path) -> None:
    """404 never counts as serving: HEALTH_OK containing it is refused."""
    _write(tmp_path, "app", "HEALTH_OK = [200, 404]\n")
    with pytest.raises(ConfigError, match="404 is refused"):
        load_meta(tmp_path, APP)


def test_duplicate_key_and_syntax_error_refused(tmp_path: Path) -> None:
    """A key assigned twice, or a file that is not Python, is a ConfigError."""
    _write(tmp_path, "app", "HTTP_TIMEOUT = 1\nHTTP_TIMEOUT = 2\n")
    with pytest.raises(ConfigError, match="assigned twice"):
        load_meta(tmp_path, APP)
    _write(tmp_path, "app", "HTTP_TIMEOUT = (\n")
    with pytest.raises(ConfigError, match="not valid Python"):
        load_meta(tmp_path, APP)


def test_bad_recipe_name_refused(tmp_path: Path) -> None:
    """A recipe name that could escape the tests dir is refused before any read."""
    with pytest.raises(InvalidInput):
        load_meta(tmp_path, Recipe("../etc"))


def test_enrolled_recipes(tmp_path: Path) -> None:
    """Only recipes with WARM_CANONICAL = True are enrolled, sorted; odd folders are ignored."""
    _write(tmp_path, "zeta", "WARM_CANONICAL = True\n")
    _write(tmp_path, "alpha", "WARM_CANONICAL = True\n")
    _write(tmp_path, "beta", "WARM_CANONICAL = False\n")
    (tmp_path / "gamma").mkdir()
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "Not_A_Recipe").mkdir()
    (tmp_path / "conftest.py").write_text("")
    assert enrolled_recipes(tmp_path) == ["alpha", "zeta"]


def test_enrolled_recipes_refuses_missing_dir_and_bad_meta(tmp_path: Path) -> None:
    """A missing tests dir or one bad file is an error, never 'nothing enrolled'."""
    with pytest.raises(ConfigError, match="does not exist"):
        enrolled_recipes(tmp_path / "missing")
    _write(tmp_path, "alpha", "WARM_CANONICAL = True\n")
    _write(tmp_path, "beta", "WARM_CANONICAL = 'yes'\n")
    with pytest.raises(ConfigError, match="beta"):
        enrolled_recipes(tmp_path)
