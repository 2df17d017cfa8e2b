"""A real SMTP server for the email tests: aiosmtpd on a free loopback port.

Usage: smtp_sink.py OUT_DIR [TEMPFAILS]

Prints the port it listens on, then writes every mail it accepts to OUT_DIR as NNNNNN.json
(envelope, headers, plain and HTML bodies as Python's email package decodes them). The first
TEMPFAILS mails are answered `451` (try again later) instead and counted in OUT_DIR/tempfails.
Runs until stdin closes or it is killed.
"""

import asyncio
import email
import json
import os
import socket
import sys
from email import policy

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out, tempfails):
        self.out = out
        self.tempfails = tempfails
        self.accepted = 0
        self.refused = 0

    async def handle_DATA(self, server, session, envelope):
        if self.refused < self.tempfails:
            self.refused += 1
            with open(os.path.join(self.out, "tempfails"), "w") as f:
                f.write(str(self.refused))
            return "451 4.3.0 try again later"
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        plain = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "content_type": msg.get_content_type(),
            "headers": {k.lower(): str(v) for k, v in msg.items()},
            "text": plain.get_content() if plain is not None else None,
            "html": html.get_content() if html is not None else None,
        }
        self.accepted += 1
        name = f"{self.accepted:06d}.json"
        tmp = os.path.join(self.out, "." + name)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.out, name))
        return "250 2.0.0 OK"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    out = sys.argv[1]
    tempfails = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    port = free_port()
    controller = Controller(Sink(out, tempfails), hostname="127.0.0.1", port=port)
    controller.start()
    print(port, flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
