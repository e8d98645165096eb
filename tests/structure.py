#!/usr/bin/env python3
"""Measures of the source tree's shape (issue 25): file-level import cycles and the
longest functions, for the crates' src/ trees, outside their tests.

    python3 tests/structure.py cycles [--exclude DIR]... [SRC_DIR...]
    python3 tests/structure.py functions [--top N] [--over LINES] [--exclude DIR]... [SRC_DIR...]

SRC_DIR defaults to crds/src, operator/src and trainer/src. `cycles` exits 1 when it
finds a cycle, `functions --over N` when a function is longer than N lines.

An edge A -> B means file A names a path (in a `use` or in code) that resolves to file
B: the longest prefix of the path that is a module file, so `crate::train::Optimizer`
is an edge to train/mod.rs even when Optimizer is only re-exported there. `mod x;`
alone is no edge (a parent declaring its children is not an import). Comments, strings
and `#[cfg(test)]` items are left out: a test's imports do not shape the crate. Each
binary under src/bin is a crate of its own; paths into another crate (janus_crds::,
janus_trainer::) cannot form a cycle and are ignored. Inline `mod x { ... }` blocks
count as part of their file.
"""

import argparse
import os
import re
import sys

DEFAULT_DIRS = ["crds/src", "operator/src", "trainer/src"]


def strip(text):
    """Blanks comments, string and char literals (keeping newlines, so line numbers hold)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif (m := re.compile(r'b?r(#*)"').match(text, i)) and (
            i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + re.sub(r"[^\n]", " ", text[i + 2 : j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append('""' + re.sub(r"[^\n]", " ", text[i + 2 : j]))
            i = j
        elif c == "'" and (m := re.compile(r"'(\\(x..|u\{[0-9a-fA-F]+\}|.)|[^\\'])'").match(text, i)):
            out.append("' '" + " " * (m.end() - i - 3))
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(text, open_at):
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(text) - 1


def item_end(text, start):
    """End of the item starting at `start`: its matching brace, or its `;` if it has none first."""
    brace, semi = text.find("{", start), text.find(";", start)
    if brace < 0 or 0 <= semi < brace:
        return semi if semi >= 0 else len(text) - 1
    return matching_brace(text, brace)


CFG_TEST = re.compile(r"#\[cfg\((all\()?test\b[^\]]*\]")
TEST_ATTR = re.compile(r"#\[(tokio::)?test\b[^\]]*\]")


def drop_tests(text):
    """Blanks #[cfg(test)] and #[test] items (keeping newlines)."""
    while True:
        m = CFG_TEST.search(text) or TEST_ATTR.search(text)
        if not m:
            return text
        end = item_end(text, m.end())
        text = text[: m.start()] + re.sub(r"[^\n]", " ", text[m.start() : end + 1]) + text[end + 1 :]


def module_files(src):
    """Crates under src: {crate root file: {module path tuple: file}}."""
    crates = {}
    roots = []
    for name in ("lib.rs", "main.rs"):
        if os.path.exists(os.path.join(src, name)):
            roots.append((os.path.join(src, name), src, {os.path.join(src, "bin")}))
    bindir = os.path.join(src, "bin")
    if os.path.isdir(bindir):
        for entry in sorted(os.listdir(bindir)):
            path = os.path.join(bindir, entry)
            if entry.endswith(".rs"):
                roots.append((path, bindir, set()))
            elif os.path.exists(os.path.join(path, "main.rs")):
                roots.append((os.path.join(path, "main.rs"), path, set()))
    for root, base, skip in roots:
        mods = {(): root}
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if os.path.join(dirpath, d) not in skip)
            for f in sorted(files):
                full = os.path.join(dirpath, f)
                if not f.endswith(".rs") or full == root or f in ("lib.rs", "main.rs") and dirpath == base:
                    continue
                if base == bindir and dirpath == base:
                    continue  # a single-file binary has no modules beside it
                rel = os.path.relpath(full, base)[:-3].split(os.sep)
                if rel[-1] == "mod":
                    rel = rel[:-1]
                mods[tuple(rel)] = full
        crates[root] = mods
    return crates


PATH = re.compile(r"(?<![\w:])(\w+(?:\s*::\s*(?:\w+|\{))+)")


def use_paths(code):
    """Every path in the code (`a::b`), with `use` groups expanded."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]*);", code):
        paths.extend(expand(re.sub(r"\s+", "", m.group(1))))
    rest = re.sub(r"\buse\s+[^;]*;", "", code)
    for m in PATH.finditer(rest):
        p = re.sub(r"\s+", "", m.group(1)).rstrip(":{")
        paths.append(p.split("::"))
    return [p for p in paths if p]


def expand(tree, prefix=()):
    """use a::{b, c::{d, e}} -> [a,b], [a,c,d], [a,c,e]."""
    out = []
    parts, depth, cur = [], 0, ""
    for ch in tree:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    for part in filter(None, parts):
        brace = part.find("{")
        if brace >= 0:
            head = [s for s in part[:brace].split("::") if s]
            out.extend(expand(part[brace + 1 : part.rindex("}")], prefix + tuple(head)))
        else:
            name = re.sub(r"\bas\b.*$", "", part)
            out.append(list(prefix) + [s for s in name.split("::") if s])
    return out


def resolve(path, here, mods):
    """The module file a path names, from module `here`, or None (another crate, a type)."""
    if path[0] not in ("crate", "super", "self"):
        # Uniform paths: `child::x` names a child module of this one.
        if here + (path[0],) not in mods:
            return None
        path = ["self"] + list(path)
    if path[0] == "crate":
        base, rest = (), path[1:]
    else:
        base, rest = here, path
        while rest and rest[0] in ("super", "self"):
            base = base[:-1] if rest[0] == "super" else base
            rest = rest[1:]
    best = base if base in mods else None
    for k in range(1, len(rest) + 1):
        cand = base + tuple(rest[:k])
        if cand in mods:
            best = cand
        else:
            break
    return best


def graph(src_dirs, excludes):
    edges = {}
    for src in src_dirs:
        for root, mods in module_files(src).items():
            by_file = {f: m for m, f in mods.items()}
            for mod, path in mods.items():
                if any(path.startswith(e.rstrip("/") + "/") or path == e for e in excludes):
                    continue
                code = drop_tests(strip(open(path, encoding="utf-8").read()))
                # A file's `self` / `super` are relative to its module; mod.rs is its directory's module.
                here = mod
                for p in use_paths(code):
                    target = resolve(p, here, mods)
                    if target is None or target == mod:
                        continue
                    tfile = mods[target]
                    if any(tfile.startswith(e.rstrip("/") + "/") for e in excludes):
                        continue
                    edges.setdefault(path, set()).add(tfile)
                edges.setdefault(path, set())
            del by_file
    return edges


def strongly_connected(edges):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def shortest_cycle(comp, edges):
    """One cycle through the component's first file, for the report."""
    start = comp[0]
    members = set(comp)
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & members):
                if w == start:
                    cyc = [v]
                    while prev[cyc[-1]] is not None:
                        cyc.append(prev[cyc[-1]])
                    return list(reversed(cyc)) + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


FN = re.compile(r"\bfn\s+(\w+)")


def functions(src_dirs, excludes):
    found = []
    for src in src_dirs:
        for dirpath, dirs, files in os.walk(src):
            dirs.sort()
            for f in sorted(files):
                path = os.path.join(dirpath, f)
                if not f.endswith(".rs") or any(path.startswith(e.rstrip("/") + "/") for e in excludes):
                    continue
                code = drop_tests(strip(open(path, encoding="utf-8").read()))
                for m in FN.finditer(code):
                    end = item_end(code, m.end())
                    if code[end] != "}":
                        continue  # a declaration without a body
                    first = code.count("\n", 0, m.start()) + 1
                    last = code.count("\n", 0, end) + 1
                    found.append((last - first + 1, path, first, m.group(1)))
    return sorted(found, key=lambda t: (-t[0], t[1], t[2]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["cycles", "functions"])
    ap.add_argument("dirs", nargs="*", default=DEFAULT_DIRS)
    ap.add_argument("--exclude", action="append", default=[], help="a directory left out")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--over", type=int, help="fail when a function is longer than this")
    args = ap.parse_intermixed_args()
    excludes = [os.path.normpath(e) for e in args.exclude]
    dirs = [os.path.normpath(d) for d in args.dirs]
    if args.what == "cycles":
        edges = graph(dirs, excludes)
        comps = strongly_connected(edges)
        for comp in comps:
            print(f"{len(comp)} files: " + " -> ".join(shortest_cycle(comp, edges)))
            if len(comp) > 2:
                print("  all: " + ", ".join(comp))
        print(f"{len(comps)} import cycle(s) in {len(edges)} files")
        sys.exit(1 if comps else 0)
    fns = functions(dirs, excludes)
    for lines, path, line, name in fns[: args.top]:
        print(f"{lines:5} {path}:{line} {name}")
    if args.over is not None:
        over = [f for f in fns if f[0] > args.over]
        print(f"{len(over)} function(s) over {args.over} lines")
        sys.exit(1 if over else 0)


if __name__ == "__main__":
    main()
