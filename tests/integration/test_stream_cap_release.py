"""A stream's per-user slot is free before the client has the end (issue
10, item 7): a client that opens its next stream as soon as it reads
`done` never finds the cap still counting the stream that just ended.

The client is tests/bench/loadgen: the window it probes (between the
relay writing `done` and the slot coming free) is tens of microseconds,
which only a client in C reopens fast enough to hit (before the fix: ~1%
of 3,000 streams refused)."""

import json
import subprocess

import harness
from test_stream import STREAM, account, fake, query

CAP = 4
LOADGEN = harness.ROOT / "tests" / "bench" / "loadgen"


@harness.timeout(180)
@harness.stack_env(JARVAS_MAX_STREAMS_PER_USER=str(CAP))
def test_streams_opened_on_done_at_the_cap_are_never_refused(stack):
    """CAP connections of one user, each opening its next stream the moment
    the previous one ends: 3,000 streams, none refused."""
    user = account(stack, "capdone")
    path = STREAM + query(message="next " + fake(tokens=1)) + "&conversation_id=c-{i}"
    r = subprocess.run([str(LOADGEN), "-q", "-m", "sse", "-n", "3000", "-c", str(CAP), "-T", "150",
                        "-a", "Bearer " + user["access"], f"127.0.0.1:{stack.port}", path],
                       capture_output=True, text=True, timeout=170)
    assert r.returncode == 0 and r.stdout, f"loadgen failed: {r.stderr[-500:]}"
    out = json.loads(r.stdout)
    assert out["statuses"] == {"200": 3000}, (out["statuses"], out["failed_by_reason"])
    assert out["done"] == 3000, out
