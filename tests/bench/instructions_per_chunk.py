#!/usr/bin/env python3
"""Instructions (callgrind Ir) of chat_stream per relayed chunk.

The same 40 streams, once with 10 tokens each and once with 310, through a
stack whose chat_stream runs under callgrind; (Ir(310) - Ir(10)) / (40 * 300)
is what one chunk costs in user space, and unlike CPU time it barely moves
between runs on a noisy machine (two runs agree within 1%).  The kernel's
share (writes, epoll) is not in it: make bench measures that.

usage: tests/bench/instructions_per_chunk.py CHECKOUT ollama|openai
CHECKOUT: a built tree (cgi-bin/, tests/integration/), e.g. a git worktree
of another commit, to compare.  Needs valgrind; scratch in /tmp."""
import os, shutil, subprocess, sys, tempfile, glob, re
checkout, api = sys.argv[1], sys.argv[2]
work = tempfile.mkdtemp(prefix="jarvas-ir-"); os.chmod(work, 0o755)
for d in ("prog", "bin", "out"):
    os.makedirs(f"{work}/{d}"); os.chmod(f"{work}/{d}", 0o777 if d == "out" else 0o755)
for name in ("token", "chat", "chat_stream", "jarvas-admin"):
    shutil.copy2(f"{checkout}/cgi-bin/{name}", f"{work}/prog/{name}")
    with open(f"{work}/bin/{name}", "w") as f:
        if name == "chat_stream":
            f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={work}/out/cg.%p {work}/prog/{name} \"$@\"\n")
        else:
            f.write(f"#!/bin/sh\nexec {work}/prog/{name} \"$@\"\n")
    os.chmod(f"{work}/bin/{name}", 0o755)
os.environ["JARVAS_TEST_BIN"] = f"{work}/bin"
os.environ["JARVAS_TEST_UPSTREAM_API"] = api
sys.path.insert(0, f"{checkout}/tests/integration")
import harness
harness.START_TIMEOUT = 300
STREAMS = 40
def run(tokens):
    for f in glob.glob(f"{work}/out/cg.*"): os.remove(f)
    env = dict(JARVAS_STOP_GRACE="90", JARVAS_PROCS_CHAT_STREAM="1", JARVAS_WORKERS_CHAT_STREAM="4",
               JARVAS_ACCESS_LIFETIME="3600")
    s = harness.Stack(env)
    s.start()
    try:
        name, pw = s.user("ir"); access, _ = s.login(name, pw)
        for i in range(STREAMS):
            ev = s.sse(f"/api/chat/stream/?message=x%20%5B%5Bfake%20tokens%3D{tokens}%5D%5D&conversation_id=c{i}",
                       token=access, timeout=300)
            n = sum(1 for e in ev.data_events() if e["event"] == "message")
            assert n == tokens, (n, tokens)
    finally:
        s.stop()
    total = 0
    for f in glob.glob(f"{work}/out/cg.*"):
        for line in open(f):
            if line.startswith("summary:") or line.startswith("totals:"):
                total = max(total, int(line.split()[1]))
    return total
a = run(10); b = run(310)
print(f"{checkout} {api}: Ir(10)={a} Ir(310)={b} per chunk={(b - a) / (STREAMS * 300):.0f}")
shutil.rmtree(work, ignore_errors=True)
