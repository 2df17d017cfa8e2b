"""Schemathesis hooks for the origin's contract run (origin/tests/schemathesis/run.sh).

`POST /v1/tokens/revoke` with no token in the body revokes the caller's own token, which would
lock every later request of the run out. Each call of it therefore authenticates with a token
minted for it just before, so the run's main token stays valid.
"""

import atexit
import collections
import json
import os
import sys
import urllib.request

import schemathesis


def _fresh_token() -> str:
    request = urllib.request.Request(
        os.environ["ST_BASE_URL"] + "/v1/tokens",
        data=b"{}",
        method="POST",
        headers={"Authorization": "Bearer " + os.environ["ST_TOKEN"], "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["token"]


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path == "/v1/tokens/revoke" and case.operation.method.upper() == "POST":
        headers = case.headers if case.headers is not None else {}
        if headers.get("Authorization") == "Bearer " + os.environ["ST_TOKEN"]:
            headers["Authorization"] = "Bearer " + _fresh_token()
            case.headers = headers


# Refusals of schema-valid requests that depend on what is stored, or on a limit the schema
# cannot state (bytes of UTF-8 where JSON Schema counts characters). Each is documented in the
# schema's text and in docs/API.md; any other refusal of a schema-valid request fails the run.
STATE_RULES = (
    "is a reply; threads start at a top-level message",  # follow / thread of a reply
    "is not a top-level message",  # a reply whose thread_root is missing or itself a reply
    "different emoji",  # at most 50 different emoji on a message
    "a group DM has at most",  # more than 9 different people
    "client_msg_id must be 1 to",  # 64 bytes, which fewer than 64 characters can exceed
    "text is over",  # 64 KiB, which fewer than 40,000 characters can exceed
    "duplicate of a rejected send",  # a retry of a refused send in the same group commit
    "is deactivated",  # inviting a deactivated user, or opening a DM with one
    "you cannot deactivate yourself",
    "is an app's bot user",  # a deleted app's bot user is not reactivated (docs/API.md, Apps)
    # The search language's grammar and the search cursor's contents, which a schema cannot
    # state (docs/API.md, Search): each refusal says what to fix.
    "the search query is",  # empty (only spaces), too long, too many parts
    "a quote is not closed",
    "must be followed by a word or a phrase",
    "can be excluded, not",
    "needs a value, e.g.",
    " takes ",  # an operator's value of the wrong kind
    "may be given only once",
    "a search needs a word",
    "the search cursor is invalid",
    # Notifications (docs/API.md, Notifications): a push endpoint must be https and not an
    # internal address, its keys a real P-256 point and a 16-byte secret; a time zone must be
    # one the IANA database knows; a keyword must have a character once trimmed.
    "endpoint: ",
    "subscription: ",
    "push subscriptions per user",
    "unknown time zone",
    "a keyword must",
    # Apps (docs/API.md, Apps): a token's scopes must be among its app's; a webhook's URL must be
    # https and not an internal address, its app must have `events`, and an app has at most 20;
    # a replay's cursor must still be in the feed.
    "the app was not given the scope",
    "url: ",
    "the app needs the",
    "an app has at most",
    "is older than the feed's retention",
    # Slash commands (docs/API.md, Slash commands): a text starting with `/name` runs the
    # workspace's command of that name, and there may be none.
    "is not a command in this workspace",
)


accepted = collections.Counter()
statuses = collections.defaultdict(collections.Counter)


@schemathesis.hook
def after_call(context, case, response):
    statuses[case.operation.method.upper() + " " + case.operation.path][response.status_code] += 1


@schemathesis.hook
def filter_failure(context, failure, case, response):
    # A slash command whose app failed or is unreachable (docs/API.md, Slash commands): the
    # app's state, not the request's.
    if failure.code == "ST202" and response.status_code == 424:
        accepted[(case.operation.method.upper() + " " + case.operation.path, "command_failed")] += 1
        return False
    if failure.code != "ST202" or response.status_code not in (400, 413):
        return True
    try:
        message = json.loads(response.content)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return True
    for rule in STATE_RULES:
        if rule in message:
            accepted[(case.operation.method.upper() + " " + case.operation.path, rule)] += 1
            return False
    return True


@atexit.register
def report():
    if statuses:
        total = sum(sum(c.values()) for c in statuses.values())
        print(f"\nResponses by operation and status ({total} requests):", file=sys.stderr)
        for operation, counts in sorted(statuses.items(), key=lambda kv: kv[0].split(" ", 1)[::-1]):
            spread = "  ".join(f"{status}: {n}" for status, n in sorted(counts.items()))
            print(f"  {operation:62} {spread}", file=sys.stderr)
    if accepted:
        print("\nRefusals of schema-valid requests accepted as documented state rules:", file=sys.stderr)
        for (operation, rule), n in sorted(accepted.items()):
            print(f"  {n:5}  {operation}: {rule}", file=sys.stderr)
