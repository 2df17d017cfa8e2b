"""The Web Push peer of `selvage loadtest notify`: pywebpush, the library Python servers send Web
Push with, sending COUNT pushes to the loadtest's receiver — each encrypted (aes128gcm, RFC 8291)
to the given subscription keys and signed with VAPID (RFC 8292), THREADS at once, each thread
with its own keep-alive session. It does only the sending: no store, no decision.

Usage: webpush_peer.py --base URL --count N --threads T --p256dh KEY --auth SECRET
(pip install pywebpush)
"""

import argparse
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from py_vapid import Vapid02
from pywebpush import webpush


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--p256dh", required=True)
    p.add_argument("--auth", required=True)
    a = p.parse_args()

    vapid = Vapid02()
    vapid.generate_keys()
    sessions = threading.local()
    payload = json.dumps({
        "id": "W1/U1/C1/1", "workspace": "W1", "user": "U1",
        "channel": {"id": "C1", "name": "announce", "kind": "channel"},
        "seq": 1, "count": 1, "reason": "broadcast", "title": "#announce",
        "body": "Admin: @channel the office is closed tomorrow",
        "text": "@channel the office is closed tomorrow", "ts": 1767225600000,
    })

    def send(i):
        if not hasattr(sessions, "s"):
            sessions.s = requests.Session()
        sub = {"endpoint": f"{a.base}/{i}", "keys": {"p256dh": a.p256dh, "auth": a.auth}}
        r = webpush(sub, payload, vapid_private_key=vapid,
                    vapid_claims={"sub": "mailto:notifications@selvage.invalid"},
                    ttl=86400, headers={"Urgency": "normal"}, requests_session=sessions.s)
        if r.status_code >= 300:
            raise RuntimeError(f"push {i} answered {r.status_code}")

    with ThreadPoolExecutor(a.threads) as pool:
        for _ in pool.map(send, range(a.count)):
            pass


if __name__ == "__main__":
    main()
