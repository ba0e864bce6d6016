"""A websocket client for the tests: sends frames to ``/ws`` and prints what comes back.

``python -m tests.e2e.live_client URL COUNT [FRAME...]`` sends each FRAME
(text, as given), then prints the next COUNT frames it receives, one a
line, and exits; 3 if they do not come within 10 s. It runs in a process
of its own because the test process is patched by eventlet.
"""

from __future__ import annotations

import sys

from websockets.sync.client import connect

WAIT_SECONDS = 10.0


def main(url: str, count: int, frames: list[str]) -> int:
    with connect(url) as socket:
        for frame in frames:
            socket.send(frame)
        for _ in range(count):
            try:
                print(socket.recv(timeout=WAIT_SECONDS), flush=True)
            except TimeoutError:
                return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
