#!/usr/bin/env python3
"""Integration-test runner.

usage: run.py [TEST...]    TEST: test_token, test_token.py, a path to one,
                           or test_token.test_refresh (one test; its cases too)

Runs every module-level function named test_* of tests/integration/test_*.py
(or of the files named), file by file in definition order, each as
test(stack) — or test(stack, case) once per row when marked with
harness.cases — on one shared harness.Stack. A test marked
harness.stack_env(...) gets a Stack of its own with those variables (shared
with the other tests of its file that ask for the same ones).

build/tools/ (promtool, from make deps-test) comes first on PATH.

Prints "ok   <module>.<test>" or "FAIL <module>.<test>: <reason>" per test and
then "N passed, N failed"; exits 0 only when nothing failed. A test fails
too when a responder restarts while it runs (unless harness.allows_restarts)
or when it runs longer than its time limit (120 s, or harness.timeout(s)).
Python 3 standard library only.
"""

import importlib
import time
import inspect
import os
import signal
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# Tools the tests run that make deps-test puts into the build (promtool).
TOOLS = HERE.parents[1] / "build" / "tools"
os.environ["PATH"] = f"{TOOLS}{os.pathsep}{os.environ.get('PATH', '')}"

import harness  # noqa: E402

DEFAULT_TIMEOUT = 120


class Test:
    def __init__(self, module, fn, case=None, case_name=None):
        self.module = module
        self.fn = fn
        self.case = case
        self.name = f"{module}.{fn.__name__}" + (f"[{case_name}]" if case_name else "")
        self.has_case = case_name is not None
        self.env = getattr(fn, "stack_env", None)
        self.timeout = getattr(fn, "timeout", DEFAULT_TIMEOUT)
        self.allows_restarts = getattr(fn, "allows_restarts", False)


class TestTimeout(Exception):
    pass


def say(line=""):
    print(line, flush=True)


def select(args):
    """[(module name, test name or None)] for the command line."""
    if not args:
        return [(p.stem, None) for p in sorted(HERE.glob("test_*.py"))]
    out = []
    for a in args:
        a = Path(a).name if a.endswith(".py") else a
        a = a.removesuffix(".py")
        module, _, test = a.partition(".")
        if not (HERE / f"{module}.py").exists():
            raise SystemExit(f"run.py: no such test file: {HERE / module}.py")
        out.append((module, test or None))
    return out


def collect(module_name, only):
    """The tests of one module, in definition order, cases expanded."""
    mod = importlib.import_module(module_name)
    fns = [f for name, f in vars(mod).items()
           if name.startswith("test_") and inspect.isfunction(f) and f.__module__ == mod.__name__]
    fns.sort(key=lambda f: f.__code__.co_firstlineno)
    if only is not None:
        fns = [f for f in fns if f.__name__ == only]
        if not fns:
            raise SystemExit(f"run.py: no test {only} in {module_name}")
    tests = []
    for f in fns:
        if hasattr(f, "cases"):
            tests += [Test(module_name, f, c, f.case_name(c)) for c in f.cases]
        else:
            tests.append(Test(module_name, f))
    return tests


def short_traceback(exc):
    """The frames in the tests and the harness: not the runner's, not Python's."""
    here = Path(__file__).resolve()
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).resolve().parent == HERE and Path(f.filename).resolve() != here]
    lines = traceback.format_list(frames[-6:])
    return "".join("    " + ln for chunk in lines for ln in chunk.splitlines(True))


def reason(exc):
    text = str(exc).strip() or "(no message)"
    if isinstance(exc, (AssertionError, TestTimeout)):
        return text
    return f"{type(exc).__name__}: {text}"


def on_alarm(signum, frame):
    raise TestTimeout("the test ran past its time limit")


def run_test(test, stack):
    """None when the test passed, else the failure text."""
    before = stack.restart_counts()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, test.timeout)
    try:
        if test.has_case:
            test.fn(stack, test.case)
        else:
            test.fn(stack)
    except Exception as exc:  # noqa: BLE001 — every failure is reported
        return f"{reason(exc)}\n{short_traceback(exc)}".rstrip()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if not test.allows_restarts:
        after = stack.restart_counts()
        died = sorted(i for i, n in after.items() if n > before.get(i, 0))
        if died:
            logs = "".join(harness.log_tail(stack.state / "log" / f"{i.split('.')[0]}.log", 15)
                           for i in died)
            return f"responder restarted while the test ran: {', '.join(died)}\n{logs}".rstrip()
    return None


def main(argv):
    selected = select(argv)
    passed = failed = 0
    shared = None
    own = {}  # env items -> Stack, for the current module

    def stack_for(test):
        nonlocal shared
        if test.env is None:
            if shared is None:
                shared = harness.Stack().start()
            return shared
        key = tuple(sorted(test.env.items()))
        if key not in own:
            own[key] = harness.Stack(test.env).start()
        return own[key]

    took = {}  # module -> seconds, printed at the end (the slowest first)
    try:
        for module, only in selected:
            t_module = time.monotonic()
            try:
                tests = collect(module, only)
            except SystemExit:
                raise
            except Exception as exc:  # noqa: BLE001
                failed += 1
                say(f"FAIL {module}: cannot import: {reason(exc)}\n{short_traceback(exc)}".rstrip())
                continue
            for test in tests:
                try:
                    stack = stack_for(test)
                except harness.StackError as exc:
                    say(f"FAIL {test.name}: the stack did not start\n{exc}")
                    failed += 1
                    if test.env is None:
                        say(f"{passed} passed, {failed} failed")
                        return 2
                    continue
                failure = run_test(test, stack)
                if failure is None:
                    passed += 1
                    say(f"ok   {test.name}")
                else:
                    failed += 1
                    say(f"FAIL {test.name}: {failure}")
            for s in own.values():
                s.stop()
            own.clear()
            took[module] = took.get(module, 0) + time.monotonic() - t_module
    finally:
        for s in own.values():
            s.stop()
        if shared is not None:
            shared.stop()
    say("seconds by file: " + ", ".join(f"{m} {t:.0f}" for m, t in
                                         sorted(took.items(), key=lambda kv: -kv[1])))
    say(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
