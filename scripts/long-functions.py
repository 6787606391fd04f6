#!/usr/bin/env python3
"""The longest functions of src/ outside test modules, and the house limits on them.

A function's length is its lines from `fn` to its closing brace. The limits (docs/design.md):
none over 150 lines, at most five over 80. `python3 scripts/long-functions.py` prints every
function over 80 lines, longest first, and exits 1 when a limit is broken; `--top N` prints the
N longest whatever their length.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rust_source  # noqa: E402

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX = 150
LONG = 80
MOST_LONG = 5
FN = re.compile(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?(?:async\s+)?(?:unsafe\s+)?(?:const\s+)?fn\s+([A-Za-z0-9_]+)")


def code_lines(text):
    """The file's lines, strings and comments blanked (braces in them do not count)."""
    return rust_source.code(text).split("\n")


def functions(path):
    with open(path, encoding="utf-8") as fh:
        lines = code_lines(fh.read())
    found = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"\s*#\[cfg\(test\)\]", line) and i + 1 < len(lines) and re.match(r"\s*mod tests", lines[i + 1]):
            break
        m = FN.match(line)
        if m:
            depth, started, j = 0, False, i
            while j < len(lines):
                for ch in lines[j]:
                    if ch == "{":
                        depth += 1
                        started = True
                    elif ch == "}":
                        depth -= 1
                if started and depth <= 0:
                    break
                if not started and lines[j].rstrip().endswith(";"):
                    break
                j += 1
            if started:
                found.append((j - i + 1, m.group(1), i + 1))
            i = j + 1 if started else i + 1
            continue
        i += 1
    return found


def main():
    allf = []
    for root, _, files in os.walk(SRC):
        for f in sorted(files):
            if f.endswith(".rs"):
                p = os.path.join(root, f)
                rel = os.path.relpath(p, SRC)
                allf += [(n, name, rel, line) for n, name, line in functions(p)]
    allf.sort(reverse=True)
    if "--top" in sys.argv:
        k = int(sys.argv[sys.argv.index("--top") + 1])
        for n, name, rel, line in allf[:k]:
            print(f"{n:5} {rel}:{line} {name}")
        return 0
    long = [f for f in allf if f[0] > LONG]
    for n, name, rel, line in long:
        print(f"{n:5} {rel}:{line} {name}")
    over = [f for f in allf if f[0] > MAX]
    ok = not over and len(long) <= MOST_LONG
    print(
        f"long-functions: {len(allf)} functions, {len(long)} over {LONG} lines (at most {MOST_LONG}), "
        f"{len(over)} over {MAX} (none): {'kept' if ok else 'BROKEN'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
