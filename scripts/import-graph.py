#!/usr/bin/env python3
"""The import graph of src/, built from the source, and the house rules it must keep.

Every `crate::a::b` and `super::x` path outside test modules is an edge from the file that
writes it to the file that defines the module it names. The rules (docs/design.md, "Layers"):

1. No circle between files of different folders: a strongly connected set of files must lie
   in one folder (src/ itself is a folder; src/run/ another).
2. The binary's edge (app.rs, cli.rs) is imported by nothing but itself, main.rs and
   config/resolve.rs (where flags become a RunConfig: the flags' other half, as ripgrep's
   hiargs is to its flags).
3. The leaves stay leaves: the provider client, the limiter and the budget import neither the
   output's records nor the coordinator.

`python3 scripts/import-graph.py` prints the broken rules and exits 1, or prints a one-line
summary and exits 0. `--map` prints each file's imports, a line each.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rust_source  # noqa: E402

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
EDGE = {"app", "cli"}
EDGE_READERS = {("config", "resolve")}
LEAVES = {
    ("provider",): ("output", "coordinator"),
    ("limit",): ("output", "coordinator"),
    ("budget",): ("output", "coordinator"),
}
PATH = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)*)::\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")


def modules():
    """Module path (a tuple) -> file, for every file under src/ but main.rs."""
    found = {}
    for root, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs") or f == "main.rs":
                continue
            rel = os.path.relpath(os.path.join(root, f), SRC)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib"):
                rel = rel[:-1]
            found[tuple(rel)] = os.path.join(root, f)
    return found


def strip(text):
    """The code of a file (rust_source.code), its test module cut."""
    code = rust_source.code(text)
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests", code)
    return code[: cut.start()] if cut else code


def resolve(mods, here, kind, path):
    """The module (an existing file) a path names, from the file of module `here`."""
    parts = [p for p in path.split("::") if p]
    if kind == "crate":
        base = []
    else:
        base = list(here[:-1])
        while parts and parts[0] == "super":
            parts.pop(0)
            base = base[:-1]
    full = base + parts
    for n in range(len(full), -1, -1):
        if tuple(full[:n]) in mods:
            return tuple(full[:n])
    return ()


def edges(mods):
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        with open(f, encoding="utf-8") as fh:
            text = strip(fh.read())
        # `mod.rs` files are the module itself: `super` there is the parent.
        here = m + ("mod",) if f.endswith("mod.rs") else m
        paths = [(k, p) for k, p in PATH.findall(text)]
        for k, prefix, inner in GROUP.findall(text):
            for item in re.split(r"[,\s]+", re.sub(r"\{[^{}]*\}", "", inner)):
                item = item.split(" as ")[0].strip()
                if item and item != "self" and re.match(r"[a-z_]", item):
                    paths.append((k, prefix + "::" + item))
        for k, p in paths:
            t = resolve(mods, here, k, p)
            if t and t != m and t != ():
                graph[m].add(t)
    return graph


def folder(m, mods):
    f = mods[m]
    return os.path.dirname(os.path.relpath(f, SRC))


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(m) or "crate"


def main():
    mods = modules()
    graph = edges(mods)
    if "--map" in sys.argv:
        for m in sorted(graph):
            print(f"{name(m)} -> {', '.join(sorted(name(t) for t in graph[m] if t)) or '-'}")
        return 0
    broken = []
    for comp in sccs(graph):
        folders = {folder(m, mods) for m in comp}
        if len(comp) > 1 and len(folders) > 1:
            members = ", ".join(sorted(name(m) for m in comp))
            broken.append(f"a circle across folders {sorted(folders)}: {members}")
    for m, targets in sorted(graph.items()):
        for t in sorted(targets):
            if t and t[0] in EDGE and m and m[0] not in EDGE and m not in EDGE_READERS:
                broken.append(f"{name(m)} imports the binary's edge {name(t)}")
            for leaf, banned in LEAVES.items():
                if m[: len(leaf)] == leaf and t and t[0] in banned:
                    broken.append(f"{name(m)} (a leaf) imports {name(t)}")
    for b in broken:
        print(f"import-graph: {b}")
    if broken:
        return 1
    files = len(graph)
    links = sum(len(v) for v in graph.values())
    print(f"import-graph: {files} files, {links} imports, no circle across folders, the edge and the leaves kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
