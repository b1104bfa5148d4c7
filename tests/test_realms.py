"""The realm reaper (R3.2): the plan as a table, and reap() over 1,000 realms of a Keycloak."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fake_keycloak import REALMS_PATH, TOKEN_PATH, FakeKeycloak
from pydantic import SecretStr

from ccci_tasks.errors import KeycloakError
from ccci_tasks.keycloak import KeycloakAdmin
from ccci_tasks.realms import ReapPlan, plan_reap, reap

USER, PASSWORD = "admin", "reap-pass-0c1d"

NOT_PER_RUN = "not a per-run realm <parent>-<6hex>: never touched"
MASTER = "master is Keycloak's admin realm: never touched"


@pytest.mark.parametrize(
    ("realm", "live", "why"),
    [
        ("ccci-1a2b3c", set(), None),
        ("ccci-1a2b3c", {"1a2b3c"}, "run 1a2b3c is live"),
        ("lasuite-drive-1a2b3c", {"000000"}, None),  # any parent
        ("lasuite_drive-0f0f0f", set(), None),
        ("master-1a2b3c", set(), None),  # a per-run realm of parent "master", not master
        ("a-000000", set(), None),
        ("master", set(), MASTER),
        ("master", {"master"}, MASTER),
        ("operators", set(), NOT_PER_RUN),
        ("ccci", set(), NOT_PER_RUN),
        ("ccci-1A2B3C", set(), NOT_PER_RUN),  # uppercase hex is no run of ours
        ("ccci-12345", set(), NOT_PER_RUN),
        ("ccci-1234567", set(), NOT_PER_RUN),
        ("ccci_1a2b3c", set(), NOT_PER_RUN),
        ("-1a2b3c", set(), NOT_PER_RUN),
        ("1a2b3c", set(), NOT_PER_RUN),
        ("Team-1a2b3c", set(), NOT_PER_RUN),
        ("ccci-1a2b3g", set(), NOT_PER_RUN),
        ("ccci-1a2b3c ", set(), NOT_PER_RUN),
        ("", set(), NOT_PER_RUN),
    ],
)
def test_plan_reap_table(realm: str, live: set[str], why: str | None) -> None:
    """Orphaned per-run realms are deleted; master, other shapes and live runs are kept."""
    plan = plan_reap([realm], live)
    if why is None:
        assert plan == ReapPlan(deleted=[realm], kept=[])
    else:
        assert plan == ReapPlan(deleted=[], kept=[{"realm": realm, "why": why}])


def test_plan_reap_keeps_order_and_lists_each_realm_once() -> None:
    """The plan follows the listing order, names each realm once and serialises as JSON."""
    plan = plan_reap(["b-00000b", "master", "a-00000a", "b-00000b", "c-00000c"], {"00000c"})
    assert plan.to_json() == {
        "deleted": ["b-00000b", "a-00000a"],
        "kept": [{"realm": "master", "why": MASTER},
                 {"realm": "c-00000c", "why": "run 00000c is live"}],
    }
    assert plan_reap([], {"abcdef"}) == ReapPlan()


# --------------------------------------------------------------------------- reap over HTTP

PARENTS = ("ccci", "lasuite-drive", "nextcloud", "my_app")


def _population() -> tuple[list[str], list[str], set[str], list[str]]:
    """900 dead per-run realms, 50 live ones, 49 of other shapes (master comes with the fake)."""
    dead = [f"{PARENTS[i % 4]}-{i:06x}" for i in range(900)]
    live_hexes = {f"{0xa00000 + i:06x}" for i in range(50)}
    live = [f"{PARENTS[i % 4]}-{h}" for i, h in enumerate(sorted(live_hexes))]
    others = ([f"team{i}" for i in range(20)] + [f"ops-{i:05x}" for i in range(10)]
              + [f"App-{i:06x}" for i in range(10)] + [f"x-{i:07x}" for i in range(9)])
    assert len(dead) + len(live) + len(others) + 1 == 1000
    return dead, live, live_hexes, others


@pytest.fixture(scope="module")
def server() -> Iterator[FakeKeycloak]:
    """One Keycloak stand-in for the module."""
    fake = FakeKeycloak(USER, PASSWORD).start()
    yield fake
    fake.stop()


@pytest.fixture
def populated(server: FakeKeycloak) -> FakeKeycloak:
    """The stand-in holding exactly master plus the 999 realms of ``_population``."""
    server.start()
    server.realms.clear()
    dead, live, _, others = _population()
    server.add_realms(["master", *dead, *live, *others])
    server.reset_counts()
    return server


@pytest.fixture
def admin(server: FakeKeycloak) -> Iterator[KeycloakAdmin]:
    with KeycloakAdmin(server.url, USER, SecretStr(PASSWORD)) as client:
        yield client


def test_reap_deletes_exactly_the_900_orphans_with_one_list(
    populated: FakeKeycloak, admin: KeycloakAdmin
) -> None:
    """Of 1,000 realms exactly the 900 dead per-run ones go, after one list call."""
    dead, live, live_hexes, others = _population()
    result = reap(admin, live_hexes, dry_run=False)
    assert result["deleted"] == dead
    assert "dry_run" not in result
    kept = {k["realm"]: k["why"] for k in result["kept"]}
    assert set(kept) == {"master", *live, *others}
    assert kept["master"] == MASTER
    assert all(kept[realm] == f"run {realm[-6:]} is live" for realm in live)
    assert all(kept[realm] == NOT_PER_RUN for realm in others)
    assert sorted(populated.realm_names()) == sorted(["master", *live, *others])
    assert populated.count("GET", REALMS_PATH) == 1
    deletes = sum(n for (method, _), n in populated.requests.items() if method == "DELETE")
    assert deletes == 900
    assert populated.count("POST", TOKEN_PATH) == 1


def test_dry_run_lists_the_same_900_and_deletes_nothing(
    populated: FakeKeycloak, admin: KeycloakAdmin
) -> None:
    """A dry run reports the same 900 under deleted, says dry_run and deletes nothing."""
    dead, _, live_hexes, _ = _population()
    before = populated.realm_names()
    result = reap(admin, live_hexes, dry_run=True)
    assert result["dry_run"] is True
    assert result["deleted"] == dead
    assert len(result["kept"]) == 100
    assert populated.realm_names() == before
    assert populated.count("GET", REALMS_PATH) == 1
    assert not [key for key in populated.requests if key[0] == "DELETE"]
    assert reap(admin, live_hexes, dry_run=False)["deleted"] == result["deleted"]


def test_live_set_is_read_after_the_listing(populated: FakeKeycloak,
                                            admin: KeycloakAdmin) -> None:
    """A callable live set is read after the one list call: a run started meanwhile is kept."""
    dead, _, live_hexes, _ = _population()
    seen_lists: list[int] = []

    def live_now() -> set[str]:
        seen_lists.append(populated.count("GET", REALMS_PATH))
        return live_hexes | {dead[0][-6:]}  # this run was admitted after the listing

    result = reap(admin, live_now, dry_run=False)
    assert seen_lists == [1]
    assert result["deleted"] == dead[1:]
    assert dead[0] in populated.realm_names()


def test_reap_when_keycloak_is_down(populated: FakeKeycloak, admin: KeycloakAdmin) -> None:
    """A Keycloak that does not answer makes reap raise KeycloakError; nothing is claimed."""
    populated.stop()
    with pytest.raises(KeycloakError, match="did not answer"):
        reap(admin, set(), dry_run=True)


def test_failed_delete_says_how_far_the_reap_got() -> None:
    """A delete refused mid-reap stops it with KeycloakError counting what was deleted."""
    gone: list[str] = []

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == TOKEN_PATH:
            return httpx.Response(200, json={"access_token": "t", "expires_in": 60})
        if request.method == "GET":
            return httpx.Response(200, json=[{"id": "1", "realm": r}
                                             for r in ("master", "a-000001", "a-000002")])
        if request.url.path.endswith("a-000002"):
            return httpx.Response(500)
        gone.append(request.url.path)
        return httpx.Response(204)

    admin = KeycloakAdmin("http://127.0.0.1:9", USER, SecretStr(PASSWORD),
                          transport=httpx.MockTransport(route))
    with admin, pytest.raises(KeycloakError, match=r"stopped after deleting 1 of 2 orphaned"):
        reap(admin, set(), dry_run=False)
    assert gone == ["/admin/realms/a-000001"]
