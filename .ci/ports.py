"""Free loopback ports for the processes CI starts.

Chosen below the kernel's ephemeral range (32768-60999 on Linux): a port
found free there may be taken by any outgoing connection before the server
meant for it binds it (or binds it again after a restart). Run as a script,
prints N distinct ports.
"""

import random
import socket
import sys

_TAKEN = set()


def free_port():
    """A port in 20000-31999 that binds now and was not handed out before."""
    rng = random.SystemRandom()
    while True:
        port = rng.randrange(20000, 32000)
        if port in _TAKEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port


if __name__ == "__main__":
    print(" ".join(str(free_port()) for _ in range(int(sys.argv[1]))))
