#!/usr/bin/env python3
"""Runs every block of README.md as a reader would use it, in the order they come, from the
repository root (after ./softhsm-setup.sh). A block's info string says what it is:

  sh quickstart   the two quick-start commands: the first is run (the setup, then the daemon
                  in the background, which the blocks after it use); the second must be the
                  test command .ci/run runs
  sh              run as typed (bash -euo pipefail)
  console         `$ ` commands and the output a reader sees: each is run, and the sample's
                  lines must appear in its output in the same order ("…" stands for any
                  text; "..." for lines left out)
  rust excerpt=F  lines of F, as they stand there
  json audit      an audit record: its fields in the order the daemon writes them
  text layout     paths in the repository
  toml plan       a migrate plan: `hsm-bridge migrate --dry-run` of it with the shipped config
                  must pass

Every block has a time limit, and whatever a block leaves running is stopped after it. A
block with no info string, or one this script does not know, is an error: every block is
covered.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK_LIMIT = 900  # seconds: a block may build the release binaries
BLOCK = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)


def fail(why):
    print(f"readme-examples: {why}", file=sys.stderr)
    sys.exit(1)


def step(what):
    print(f"\n== {what}", flush=True)


def bash(script, what, capture=False):
    """Runs `script` in bash in a session of its own; stops what it leaves running."""
    p = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE if capture else None,
        text=True,
    )
    try:
        out, _ = p.communicate(timeout=BLOCK_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        fail(f"{what}: still running after {BLOCK_LIMIT} s")
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if p.returncode != 0:
        fail(f"{what}: exit status {p.returncode}")
    return out


def quickstart(body, state):
    lines = [l for l in body.splitlines() if l.strip()]
    if len(lines) != 2:
        fail("the quick start is two commands")
    with open(os.path.join(ROOT, ".ci/run")) as f:
        ci = f.read()
    setup, test = lines[1].split(" && ")
    if setup not in ci or "cargo test" != test.strip():
        fail(f"the quick start's test command is not what .ci/run runs: {lines[1]}")
    setup, serve = lines[0].split(" && ")
    bash(setup, "the quick start's setup")
    log = tempfile.NamedTemporaryFile(prefix="readme-daemon-", suffix=".log", delete=False)
    daemon = subprocess.Popen(
        ["bash", "-c", serve],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    end = time.time() + BLOCK_LIMIT
    while True:
        line = daemon.stdout.readline()
        if "listening" in line:
            break
        if not line and daemon.poll() is not None or time.time() > end:
            fail(f"the quick start's daemon did not start: {open(log.name).read()[-2000:]}")
    state["daemon"] = daemon
    state["daemon_log"] = log.name


def console(body):
    commands, cmd, sample = [], None, None
    for line in body.splitlines():
        if line.startswith("$ "):
            cmd, sample = [line[2:]], []
            commands.append((cmd, sample))
        elif cmd is not None and cmd[-1].rstrip().endswith("\\") and not sample:
            cmd.append(line)
        elif sample is not None and line.strip():
            sample.append(line)
    if not commands:
        fail("a console block with no `$ ` command")
    for cmd, sample in commands:
        script = "\n".join(cmd)
        out = bash(script, f"`{cmd[0]}`", capture=True).splitlines()
        at = 0
        for want in sample:
            if want.strip() == "...":
                continue
            pattern = re.compile(re.escape(want.rstrip()).replace("…", ".*") + r"\Z")
            while at < len(out) and not pattern.match(out[at].rstrip()):
                at += 1
            if at == len(out):
                fail(f"`{cmd[0]}` no longer prints, in this order: {want!r}")
            at += 1


def excerpt(body, path):
    with open(os.path.join(ROOT, path)) as f:
        have = [l.strip() for l in f.read().splitlines()]
    want = [l.strip() for l in body.splitlines() if l.strip()]
    for i in range(len(have) - len(want) + 1):
        if have[i : i + len(want)] == want:
            return
    fail(f"the README's excerpt is not in {path} as it stands")


def audit(body, state):
    sample = list(json.loads(body, object_pairs_hook=lambda kv: kv))
    sample_keys = [k for k, _ in sample]
    op = dict(sample)["operation"]
    real = None
    with open(state["daemon_log"]) as f:
        for line in f:
            if line.startswith("{"):
                r = json.loads(line, object_pairs_hook=lambda kv: kv)
                if dict(r).get("operation") == op:
                    real = [k for k, _ in r]
    if real is None:
        fail(f"the daemon wrote no {op} audit record to compare the sample with")
    if real != sample_keys:
        fail(f"the sample audit record's fields are not the daemon's: {sample_keys} against {real}")


def plan(body):
    d = tempfile.mkdtemp()
    try:
        path = os.path.join(d, "plan.toml")
        with open(path, "w") as f:
            f.write(body)
        bash(
            "./target/release/hsm-bridge migrate --config config/hsm-bridge.toml"
            f" --plan {shlex.quote(path)} --report {shlex.quote(path)}.report.json --dry-run",
            "the migrate plan",
        )
    finally:
        shutil.rmtree(d)


def layout(body):
    for line in body.splitlines():
        if not line or line.startswith(" "):
            continue
        for path in line.split("  ")[0].split(", "):
            if not os.path.exists(os.path.join(ROOT, path.strip())):
                fail(f"the layout names {path!r}, which is not in the repository")


def main():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    state = {}
    try:
        for n, (info, body) in enumerate(BLOCK.findall(readme), 1):
            words = info.split()
            kind = " ".join(words[:2]) if words else ""
            step(f"README block {n}: {info or '(no info string)'}")
            if kind == "sh quickstart":
                quickstart(body, state)
            elif kind == "sh":
                bash(body, f"block {n}")
            elif kind == "console":
                console(body)
            elif words[:1] == ["rust"] and len(words) == 2 and words[1].startswith("excerpt="):
                excerpt(body, words[1][len("excerpt=") :])
            elif kind == "json audit":
                audit(body, state)
            elif kind == "text layout":
                layout(body)
            elif kind == "toml plan":
                plan(body)
            else:
                fail(f"block {n} has an info string this script does not know: {info!r}")
        step("README examples: all ran")
    finally:
        daemon = state.get("daemon")
        if daemon is not None:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=60)


if __name__ == "__main__":
    main()
