#!/usr/bin/env python3
"""One-definition audit of a linked moelab target against the prebuilt libraries it links.

A template instantiated both in one of our objects and in a prebuilt library is emitted as a weak
(COMDAT) symbol on both sides, and one copy wins for the whole program: the linker keeps the first
it meets among static archives, and the dynamic linker binds a shared library's own calls to the
executable's copy when the executable exports it. If the two copies were compiled for different
instruction sets, a type whose layout or allocation depends on the vector width (Eigen's: 16-byte
alignment with SSE2, 64 with AVX-512, hand-made aligned allocation past 16) is then handled by code
that disagrees about it. This lists, per prebuilt library, the weak symbols it shares with our
objects, grouped by template family, and fails when a family whose ABI depends on the instruction
set is shared by an object compiled with another -march than the library's baseline.

usage: abi_audit.py BUILD_DIR [--target moelab] [--baseline x86-64] [--verbose]
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from collections import defaultdict

# Families whose layout, alignment or allocation follow the instruction set the code is compiled
# for. std::, fmt:: and the like do not: their copies are interchangeable.
ISA_SENSITIVE = re.compile(r"\bEigen::|\bceres::|__m128|__m256|__m512|__bf16|_Float16")
WEAK_TYPES = set("WVu")


def nm_symbols(path, dynamic=False, weak_only=True):
    args = ["nm", "--defined-only", "--no-sort"]
    if dynamic:
        args.append("-D")
    out = subprocess.run(args + [path], capture_output=True, text=True).stdout
    syms = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        kind, name = parts[-2], parts[-1]
        if weak_only and kind not in WEAK_TYPES:
            continue
        syms.add(name.split("@")[0])
    return syms


def demangle(names):
    if not names:
        return {}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def family(demangled):
    # "void Eigen::internal::foo<...>(...)" -> "Eigen::internal::foo"
    text = re.sub(r"^(guard variable for |typeinfo for |typeinfo name for |vtable for )", "",
                  demangled)
    depth, head = 0, []
    for ch in text:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            if ch == "(":
                break
            head.append(ch)
    name = "".join(head).split(" ")[-1]
    return "::".join(name.split("::")[:3]) or demangled[:60]


def our_objects(build):
    """object path -> the -march it was compiled with (None: the compiler's default)."""
    with open(os.path.join(build, "compile_commands.json")) as f:
        commands = json.load(f)
    objects = {}
    for c in commands:
        args = shlex.split(c["command"]) if "command" in c else c["arguments"]
        march = None
        out = None
        for i, a in enumerate(args):
            if a.startswith("-march="):
                march = a.split("=", 1)[1]
            if a == "-o" and i + 1 < len(args):
                out = args[i + 1]
        if out is None or "/tests/" in c["file"] or "/bench/" in c["file"]:
            continue
        path = os.path.join(c["directory"], out)
        if os.path.exists(path):
            objects[path] = march
    return objects


def linked_objects(build, target, objects):
    """The objects of ours on the target's link line (through its static libraries), or a clear
    failure when any is missing: a partial build must not pass unchecked."""
    link = os.path.join(build, "CMakeFiles", f"{target}.dir", "link.txt")
    with open(link) as f:
        words = shlex.split(f.read())
    archives = [os.path.join(build, w) for w in words
                if w.endswith(".a") and not os.path.isabs(w)]
    linked = set()
    for a in archives:
        if not os.path.exists(a):
            sys.exit(f"abi_audit: {a} is on {target}'s link line but was not built")
        members = subprocess.run(["ar", "t", a], capture_output=True, text=True).stdout.split()
        linked.update(members)
    main_objects = [w for w in words if w.endswith(".o")]
    for o in main_objects:
        if not os.path.exists(os.path.join(build, o)):
            sys.exit(f"abi_audit: {o} is on {target}'s link line but was not built")
    names = {os.path.basename(o) for o in main_objects} | linked
    chosen = {o: m for o, m in objects.items() if os.path.basename(o) in names}
    missing = names - {os.path.basename(o) for o in chosen}
    if missing:
        sys.exit(f"abi_audit: no compile command for {', '.join(sorted(missing)[:5])} "
                 f"(linked into {target})")
    return chosen


def prebuilt_libraries(build, target):
    """The prebuilt static archives on the target's link line and the shared libraries it loads."""
    link = os.path.join(build, "CMakeFiles", f"{target}.dir", "link.txt")
    with open(link) as f:
        words = shlex.split(f.read())
    static = sorted({w for w in words if w.endswith(".a") and os.path.isabs(w)
                     and not w.startswith(os.path.abspath(build))})
    binary = os.path.join(build, target)
    shared = []
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    for line in ldd.splitlines():
        m = re.search(r"=>\s*(/\S+)", line)
        if m and not re.search(r"/(libc|libm|libgcc_s|ld-linux[^/]*)\.so", m.group(1)):
            shared.append(m.group(1))
    return static, shared


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--target", default="moelab")
    ap.add_argument("--verbose", action="store_true", help="list every shared family")
    ap.add_argument("--baseline", default="x86-64",
                    help="the -march the prebuilt libraries were compiled for")
    args = ap.parse_args()
    build = os.path.abspath(args.build)

    objects = linked_objects(build, args.target, our_objects(build))
    if not objects:
        sys.exit(f"abi_audit: no objects of {args.target} found through {build}")
    ours = defaultdict(set)  # symbol -> objects that define it weakly
    for obj in objects:
        for s in nm_symbols(obj):
            ours[s].add(obj)
    static, shared = prebuilt_libraries(build, args.target)

    failures = 0
    print(f"abi_audit: {len(objects)} objects of {args.target}; prebuilt: {len(static)} static, "
          f"{len(shared)} shared libraries; baseline -march={args.baseline}")
    for lib in static + shared:
        is_static = lib.endswith(".a")
        theirs = nm_symbols(lib, dynamic=not is_static, weak_only=is_static)
        common = sorted(s for s in theirs if s in ours and not s.startswith("DW.ref."))
        if not common:
            print(f"  {os.path.basename(lib)}: no shared symbols")
            continue
        names = demangle(common)
        families = defaultdict(list)
        for s in common:
            families[family(names[s])].append(s)
        namespaces = defaultdict(int)
        for fam, syms in families.items():
            namespaces[fam.split("::")[0]] += len(syms)
        print(f"  {os.path.basename(lib)} ({'static' if is_static else 'shared'}): "
              f"{len(common)} shared symbols in {len(families)} families ("
              + ", ".join(f"{ns} {n}" for ns, n in sorted(namespaces.items(), key=lambda kv: -kv[1]))
              + ")")
        for fam, syms in sorted(families.items(), key=lambda kv: -len(kv[1])):
            sensitive = any(ISA_SENSITIVE.search(names[s]) for s in syms)
            objs = sorted({o for s in syms for o in ours[s]})
            marches = sorted({objects[o] or "default" for o in objs})
            clash = sensitive and any(objects[o] not in (None, args.baseline) for o in objs)
            if not (clash or sensitive or args.verbose):
                continue
            mark = "CLASH" if clash else ("instruction-set dependent, same -march" if sensitive
                                          else "ok")
            print(f"    {len(syms):5d}  {fam:55s} {mark}; ours: "
                  f"{', '.join(os.path.basename(o) for o in objs[:3])}"
                  f"{' ...' if len(objs) > 3 else ''} (-march {', '.join(marches)})")
            if clash:
                failures += 1
    if failures:
        print(f"abi_audit: {failures} template families are instantiated with another instruction "
              f"set than a prebuilt library that shares them (see CLASH above)")
        return 1
    print("abi_audit: no instruction-set-dependent template is shared across -march")
    return 0


if __name__ == "__main__":
    sys.exit(main())
