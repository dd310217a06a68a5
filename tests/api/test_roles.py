"""Every route × every kind of caller: no token, a bad one, a revoked one, each role of an
org, and a system token, against the least role each route needs."""

from __future__ import annotations

import pytest
from api_support import Api
from route_table import MOUNTS, ROUTES, WHO, active_routes, request, served
from starlette.routing import Mount


def test_roles_in_the_table_are_known() -> None:
    assert {case.min_role for case in ROUTES} <= {None, "viewer", "operator", "admin"}
    assert len({case.key for case in ROUTES}) == len(ROUTES)


async def test_every_route_is_in_the_table(api: Api) -> None:
    """Fails when the app serves a route the table does not list: add it to route_table.py
    with the role it needs (the role, isolation and hostile-input tests then cover it)."""
    listed = {case.key for case in ROUTES}
    missing = served(api) - listed
    assert not missing, f"routes missing from tests/api/route_table.py: {sorted(missing)}"
    mounts = {route.path for route in api.app.routes if isinstance(route, Mount)}
    assert mounts <= MOUNTS, f"mounts missing from the table: {sorted(mounts - MOUNTS)}"


@pytest.mark.parametrize("who", WHO)
async def test_every_route_answers_each_caller_as_its_role_allows(api: Api, who: str) -> None:
    failures = []
    for case in active_routes(api):
        expected = case.expected(who)
        if case.stream and expected < 400:
            continue  # an open stream never ends under an ASGI client; tests/sse covers it
        response = await request(api, case, who)
        if response.status_code != expected:
            failures.append(
                f"{case.method} {case.path}: {response.status_code} != {expected}"
                f" ({response.text[:200]})"
            )
        elif expected >= 400:
            error = response.json()["error"]
            assert set(error) == {"code", "message", "details"}
            assert error["code"] == {401: "unauthorized", 403: "forbidden"}[expected]
            if expected == 401:
                assert response.headers["www-authenticate"].startswith("Bearer")
    assert not failures, "\n".join(failures)


async def test_authorization_header_must_be_bearer(api: Api) -> None:
    secret = api.secrets["viewer"]
    for header in (f"Basic {secret}", "Bearer", "Bearer ", secret, f"Token {secret}"):
        response = await api.client.get("/api/v1/whoami", headers={"Authorization": header})
        assert response.status_code == 401, header
    response = await api.client.get("/api/v1/whoami", headers={"Authorization": f"bearer {secret}"})
    assert response.status_code == 200


async def test_whoami_names_org_role_and_token(api: Api) -> None:
    response = await api.client.get("/api/v1/whoami", headers=api.auth("operator"))
    assert response.json() == {
        "org": "acme",
        "role": "operator",
        "token_id": api.token_ids["operator"],
    }
    response = await api.client.get("/api/v1/whoami", headers=api.auth("system"))
    assert response.json()["org"] == "*"


async def test_revoking_a_token_takes_effect_on_the_next_request(api: Api) -> None:
    await api.make_token("short-lived", "acme", "operator")
    headers = api.auth("short-lived")
    assert (await api.client.get("/api/v1/jobs", headers=headers)).status_code == 200
    await api.revoke("short-lived")
    assert (await api.client.get("/api/v1/jobs", headers=headers)).status_code == 401
