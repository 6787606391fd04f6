"""Rust source as code only, for the house checks (import-graph.py, long-functions.py): comments,
strings and character literals blanked, every newline kept, so line numbers and braces are the
code's own."""

import re

RAW = re.compile(r'r(#*)"')
CHAR = re.compile(r"'(\\.[^']*|[^'\\])'")


def code(text):
    """`text` with comments, strings and characters blanked; newlines kept."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            end = n if j < 0 else j + 2
            out.append("\n" * text[i:end].count("\n"))
            i = end
        elif c == "r" and RAW.match(text, i) and not re.match(r"[A-Za-z0-9_]", text[i - 1 : i] or " "):
            hashes = RAW.match(text, i).group(1)
            j = text.find('"' + hashes, i + len(hashes) + 2)
            end = n if j < 0 else j + 1 + len(hashes)
            out.append('""' + "\n" * text[i:end].count("\n"))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text[i : j + 1].count("\n"))
            i = j + 1
        elif c == "'" and CHAR.match(text, i):
            out.append("' '")
            i = CHAR.match(text, i).end()
        else:
            out.append(c)
            i += 1
    return "".join(out)
