#!/usr/bin/env python3
"""Write an on-demand platform run's results into docs/platforms.md (tools/check_platforms.sh).

    python tools/record_platform.py NAME RESULTS_FILE
    python tools/record_platform.py --describe     # the commit (+ dirty flag) to record

RESULTS_FILE holds "key: value" lines. The block between ``<!-- platform-results: NAME -->``
and ``<!-- /platform-results: NAME -->`` is replaced by a table of them, headed by the
commit the run tested (with "+ uncommitted changes" when the tree differed from it), the
date (UTC) and the host. Nothing else in the file changes.
"""

import datetime
import os
import platform
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "platforms.md")


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def commit_description():
    head = git("rev-parse", "--short=12", "HEAD")
    # docs/platforms.md itself is what this tool writes: it does not count as a change.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                ":(exclude)docs/platforms.md")
    return head + (" + uncommitted changes" if dirty else "")


def cell(text):
    return text.replace("|", "\\|").replace("\n", " ").strip()


def main(argv):
    if argv == ["--describe"]:
        print(commit_description())   # check_platforms.sh takes this when a run starts
        return
    name, results_file = argv
    # the commit the run built its sdist from (CYBN_RECORD_COMMIT, set by check_platforms.sh
    # when the run starts): HEAD may have moved during a run of half an hour
    tested = os.environ.get("CYBN_RECORD_COMMIT") or commit_description()
    with open(results_file, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split(": ", 1) for line in f if ": " in line]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        (f"Recorded by `bash tools/check_platforms.sh {name}` on {now}, commit "
         f"`{tested}`, host {platform.machine()} {platform.system()} "
         f"({os.cpu_count()} CPUs)."),
        "",
        "| what | result |",
        "|---|---|",
        *[f"| {cell(k)} | {cell(v)} |" for k, v in rows],
    ]
    start, end = f"<!-- platform-results: {name} -->", f"<!-- /platform-results: {name} -->"
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        sys.exit(f"{DOC} has no {start} ... {end} block")
    text = pattern.sub(lambda _: "\n".join([start, *body, end]), text)
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"recorded {len(rows)} results for {name} in {DOC}")


if __name__ == "__main__":
    main(sys.argv[1:])
