#!/usr/bin/python3
"""Catalog, content, readiness and smoke test of the Cairn test OpenStack.

Run by start.sh inside the container (or the build chroot), against the APIs on
127.0.0.1, with plain HTTP from the standard library: one Python process instead of ~20
`openstack` CLI calls at several seconds each.

    setup.py catalog            service project and users, the endpoints, project and user
                                `cairn` (build time; Keystone must be up)
    setup.py content            flavor m1.cairn and the two Glance images (build time)
    setup.py wait-ready SINCE TIMEOUT
                                wait until a server create would schedule: every API
                                answers and nova-compute, -scheduler and -conductor have
                                reported in since SINCE (epoch seconds); every start
    setup.py smoke              as `cairn`: create a server with user_data, see it ACTIVE
                                with the same user_data, delete it, see 404 (build time)

Credentials come from the environment (start.sh sources credentials.env).
"""

import base64
import datetime
import json
import os
import sys
import time
import urllib.error
import urllib.request

KEYSTONE = "http://127.0.0.1:5000/v3"
GLANCE = "http://127.0.0.1:9292"
NEUTRON = "http://127.0.0.1:9696"
PLACEMENT = "http://127.0.0.1:8778"
NOVA = "http://127.0.0.1:8774/v2.1"

REGION = os.environ.get("REGION", "RegionOne")
SERVICE_PASSWORD = os.environ["SERVICE_PASSWORD"]

# name, type, URL. Keystone's own endpoints come from `keystone-manage bootstrap`.
SERVICES = [
    ("glance", "image", GLANCE),
    ("placement", "placement", PLACEMENT),
    ("neutron", "network", NEUTRON),
    ("nova", "compute", NOVA),
]

FLAVOR = {"name": "m1.cairn", "id": "cairn1", "vcpus": 1, "ram": 1024, "disk": 1}
IMAGES = ["debian-12-plain", "debian-12-cairn-agent"]


class HttpError(Exception):
    pass


def call(method, url, token=None, body=None, headers=None, raw=None, ok=(200, 201, 202, 204)):
    """One HTTP request; returns (status, headers, parsed JSON or None)."""
    hdrs = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    if raw is not None:
        data = raw
        hdrs["Content-Type"] = "application/octet-stream"
    if token:
        hdrs["X-Auth-Token"] = token
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, rhdrs, text = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        status, rhdrs, text = e.code, e.headers, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise HttpError(f"{method} {url}: {e}") from e
    if status not in ok:
        raise HttpError(f"{method} {url}: HTTP {status}: {text[:500]!r}")
    parsed = json.loads(text) if text.strip() else None
    return status, rhdrs, parsed


def token(user, password, project):
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": user, "domain": {"id": "default"}, "password": password}
                },
            },
            "scope": {"project": {"name": project, "domain": {"id": "default"}}},
        }
    }
    _, hdrs, _ = call("POST", f"{KEYSTONE}/auth/tokens", body=body)
    return hdrs["X-Subject-Token"]


def admin_token():
    return token(os.environ["ADMIN_USER"], os.environ["ADMIN_PASSWORD"], os.environ["ADMIN_PROJECT"])


def cairn_token():
    return token(os.environ["CAIRN_USER"], os.environ["CAIRN_PASSWORD"], os.environ["CAIRN_PROJECT"])


def find_or_create(t, collection, key, name, body, query=None):
    """The id of the Keystone `collection` entry called `name`, created from `body` if missing."""
    q = query or f"name={name}"
    _, _, found = call("GET", f"{KEYSTONE}/{collection}?{q}", t)
    if found[collection]:
        return found[collection][0]["id"]
    _, _, made = call("POST", f"{KEYSTONE}/{collection}", t, body={key: body})
    return made[key]["id"]


def catalog():
    t = admin_token()
    _, _, roles = call("GET", f"{KEYSTONE}/roles", t)
    role = {r["name"]: r["id"] for r in roles["roles"]}
    # `keystone-manage bootstrap` makes admin, member and reader.
    for needed in ("admin", "member"):
        if needed not in role:
            sys.exit(f"setup.py: Keystone has no `{needed}` role (roles: {sorted(role)})")

    service_project = find_or_create(
        t, "projects", "project", "service", {"name": "service", "domain_id": "default"}
    )
    for user, _, _ in SERVICES:
        uid = find_or_create(
            t, "users", "user", user,
            {"name": user, "domain_id": "default", "password": SERVICE_PASSWORD},
        )
        # The services check tokens and call each other with these users. `admin` is what
        # the Debian defaults and policies expect; see neutron.conf for the `service` role.
        call("PUT", f"{KEYSTONE}/projects/{service_project}/users/{uid}/roles/{role['admin']}", t)

    for name, kind, url in SERVICES:
        sid = find_or_create(
            t, "services", "service", name, {"name": name, "type": kind, "enabled": True},
            query=f"type={kind}",
        )
        for interface in ("public", "internal", "admin"):
            _, _, have = call(
                "GET", f"{KEYSTONE}/endpoints?service_id={sid}&interface={interface}", t
            )
            if not have["endpoints"]:
                call("POST", f"{KEYSTONE}/endpoints", t, body={"endpoint": {
                    "service_id": sid, "interface": interface, "url": url,
                    "region_id": REGION, "enabled": True,
                }})

    # The unprivileged project and user the controller works as.
    project = find_or_create(
        t, "projects", "project", os.environ["CAIRN_PROJECT"],
        {"name": os.environ["CAIRN_PROJECT"], "domain_id": "default",
         "description": "Cairn's servers in tests"},
    )
    user = find_or_create(
        t, "users", "user", os.environ["CAIRN_USER"],
        {"name": os.environ["CAIRN_USER"], "domain_id": "default",
         "password": os.environ["CAIRN_PASSWORD"], "default_project_id": project},
    )
    call("PUT", f"{KEYSTONE}/projects/{project}/users/{user}/roles/{role['member']}", t)
    print("setup.py: catalog ready", flush=True)


def content():
    t = admin_token()
    _, _, flavors = call("GET", f"{NOVA}/flavors", t)
    if not any(f["id"] == FLAVOR["id"] for f in flavors["flavors"]):
        call("POST", f"{NOVA}/flavors", t, body={"flavor": FLAVOR})
    for name in IMAGES:
        _, _, have = call("GET", f"{GLANCE}/v2/images?name={name}", t)
        if have["images"]:
            continue
        _, _, image = call("POST", f"{GLANCE}/v2/images", t, body={
            "name": name, "disk_format": "raw", "container_format": "bare",
            "visibility": "public",
        })
        # The fake driver boots nothing, so any bytes do; distinct ones give distinct
        # checksums.
        data = (name.encode() + b"\n").ljust(65536, b"\0")
        call("PUT", f"{GLANCE}/v2/images/{image['id']}/file", t, raw=data)
    print("setup.py: flavor and images ready", flush=True)


def parse_time(s):
    # Nova: "2025-05-20T10:11:12.000000" (UTC, no zone).
    return datetime.datetime.fromisoformat(s.rstrip("Z")).replace(tzinfo=datetime.timezone.utc)


def not_ready(since):
    """What still stops a server create from scheduling, or None."""
    try:
        t = admin_token()
    except HttpError as e:
        return f"keystone: {e}"
    for what, url, hdrs in (
        ("glance", f"{GLANCE}/v2/images", {}),
        ("placement", f"{PLACEMENT}/resource_providers", {"OpenStack-API-Version": "placement 1.0"}),
        # The first query in a fresh Neutron API worker sets up SQLAlchemy's mappers; before
        # that GET /v2.0/ports (which Nova calls) can fail (see neutron.conf). Warm it up.
        ("neutron", f"{NEUTRON}/v2.0/networks", {}),
        ("neutron", f"{NEUTRON}/v2.0/ports?device_id=cairn-warm-up", {}),
    ):
        try:
            call("GET", url, t, headers=hdrs)
        except HttpError as e:
            return f"{what}: {e}"
    try:
        _, _, services = call("GET", f"{NOVA}/os-services", t)
        _, _, providers = call(
            "GET", f"{PLACEMENT}/resource_providers?name=cairn-compute", t,
            headers={"OpenStack-API-Version": "placement 1.0"},
        )
    except HttpError as e:
        return f"nova: {e}"
    for binary in ("nova-conductor", "nova-scheduler", "nova-compute"):
        mine = [s for s in services["services"] if s["binary"] == binary]
        if not mine:
            return f"{binary} has not registered"
        s = mine[0]
        # A service record made before this start (at image build time) may still look
        # `up` for service_down_time: only a report since this start counts.
        if s["state"] != "up" or not s["updated_at"] or parse_time(s["updated_at"]) < since:
            return f"{binary} has not reported since this start (state {s['state']}, updated {s['updated_at']})"
        if s["status"] != "enabled":
            return f"{binary} is {s['status']}"
    if not providers["resource_providers"]:
        return "placement has no resource provider for cairn-compute"
    return None


def wait_ready(since, timeout):
    since_dt = datetime.datetime.fromtimestamp(since, datetime.timezone.utc).replace(microsecond=0)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        why = not_ready(since_dt)
        if why is None:
            return
        if why != last:
            print(f"setup.py: waiting: {why}", flush=True)
            last = why
        if time.monotonic() > deadline:
            sys.exit(f"setup.py: not ready after {timeout} s: {why}")
        time.sleep(0.5)


def smoke():
    admin = admin_token()
    t = cairn_token()
    _, _, images = call("GET", f"{GLANCE}/v2/images?name={IMAGES[1]}", t)
    image = images["images"][0]["id"]
    user_data = "#cloud-config\n# smoke test at image build time: \u00e9\u00e8\n".encode()
    mv = {"OpenStack-API-Version": "compute 2.37"}
    started = time.monotonic()
    _, _, made = call("POST", f"{NOVA}/servers", t, headers=mv, body={"server": {
        "name": "cairn-smoke", "imageRef": image, "flavorRef": FLAVOR["id"],
        "networks": "none", "user_data": base64.b64encode(user_data).decode(),
    }})
    sid = made["server"]["id"]
    while True:
        _, _, s = call("GET", f"{NOVA}/servers/{sid}", admin,
                       headers={"OpenStack-API-Version": "compute 2.3"})
        s = s["server"]
        if s["status"] == "ACTIVE":
            break
        if s["status"] == "ERROR" or time.monotonic() - started > 120:
            sys.exit(f"setup.py: smoke server {sid}: {s['status']} {s.get('fault')}")
        time.sleep(0.2)
    print(f"setup.py: smoke server ACTIVE after {time.monotonic() - started:.1f} s", flush=True)
    got = base64.b64decode(s["OS-EXT-SRV-ATTR:user_data"] or "")
    if got != user_data:
        sys.exit(f"setup.py: smoke server user_data {got!r}, want {user_data!r}")
    call("DELETE", f"{NOVA}/servers/{sid}", t)
    while True:
        status, _, _ = call("GET", f"{NOVA}/servers/{sid}", t, ok=(200, 404))
        if status == 404:
            break
        if time.monotonic() - started > 180:
            sys.exit(f"setup.py: smoke server {sid} not gone after delete")
        time.sleep(0.2)
    print("setup.py: smoke test passed", flush=True)


def main(argv):
    try:
        if argv[1:] == ["catalog"]:
            catalog()
        elif argv[1:] == ["content"]:
            content()
        elif len(argv) == 4 and argv[1] == "wait-ready":
            wait_ready(int(argv[2]), int(argv[3]))
        elif argv[1:] == ["smoke"]:
            smoke()
        else:
            sys.exit(f"usage: {argv[0]} catalog | content | wait-ready SINCE TIMEOUT | smoke")
    except HttpError as e:
        sys.exit(f"setup.py {' '.join(argv[1:])}: {e}")


if __name__ == "__main__":
    main(sys.argv)
