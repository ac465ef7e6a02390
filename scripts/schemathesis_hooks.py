"""Schemathesis hooks for scripts/schemathesis.sh.

Two things the generator cannot do alone:

- It authenticates with the bootstrap admin key, and an admin may expire, delete or narrow
  any key and disable or demote any user, itself included. Left alone, the generator finds
  the run's own key id (GET /api/v1/me, or a link from GET /api/v1/keys) and ends the run's
  authority a few seconds in: every later call is a 401 and tests nothing. A call aimed at
  the run's own key or user is pointed at an id that does not exist instead, which still
  exercises the 404 path.
- Random ids only ever reach the 404 path. The script creates a few providers, users and
  keys first; half of the calls that take an id get one of those instead, and half of the
  key creations get a real provider and owner, so the handlers behind the 404 are tested
  too. The choice is seeded, so a run is repeatable.
"""

import os
import random

import schemathesis

PROTECTED = {
    os.environ["KEYWARD_ST_KEY_ID"]: "key_00000000000000000000000000",
    os.environ["KEYWARD_ST_USER_ID"]: "usr_00000000000000000000000000",
}
SEEDED = {
    "/api/v1/keys/": os.environ["KEYWARD_ST_KEYS"].split(),
    "/api/v1/providers/": os.environ["KEYWARD_ST_PROVIDERS"].split(),
    "/api/v1/users/": os.environ["KEYWARD_ST_USERS"].split(),
}
RNG = random.Random(7)


@schemathesis.hook
def before_call(context, case, **kwargs):
    path = case.operation.path
    params = case.path_parameters
    if params and "id" in params:
        for prefix, ids in SEEDED.items():
            if path.startswith(prefix) and ids and RNG.random() < 0.5:
                params["id"] = RNG.choice(ids)
        if params["id"] in PROTECTED:
            params["id"] = PROTECTED[params["id"]]
    if path == "/api/v1/keys" and case.method.upper() == "POST" and isinstance(case.body, dict):
        if RNG.random() < 0.5:
            case.body["provider_id"] = RNG.choice(SEEDED["/api/v1/providers/"])
            if RNG.random() < 0.5:
                case.body["owner_id"] = RNG.choice(SEEDED["/api/v1/users/"])


# Bodies that choose whether the provider is called to check a credential. Nothing is
# reachable from the run, so a check is always a 502 "could not be reached": right, but
# it would hide everything behind it. The checking path has its own tests (tests/it).
VERIFYING = {
    ("POST", "/api/v1/providers"),
    ("PUT", "/api/v1/providers/{id}/credential"),
}


@schemathesis.hook("before_call")
def no_live_checks(context, case, **kwargs):
    if (case.method.upper(), case.operation.path) in VERIFYING and isinstance(case.body, dict):
        case.body["verify"] = False
