#!/usr/bin/env python3
"""Loops over numbers outside the kernels: every `for` loop of the layers above the device seam
(model, eval, serve, train) whose body works on floating-point arrays element by element is
reported, unless its function is in ALLOWED below. Such a loop belongs in an op of the device's
table (backend/device.hpp), where a backend on another device can run it.

What counts, in a loop's body (comments and strings stripped):
  - a call of a floating-point math function (std::exp, log, sqrt, tanh, fma, ...);
  - an element of a floating-point array (a name declared float, double or T: a scalar, pointer,
    span, vector or Buffer of them) in arithmetic (+ - * /, +=, ...), read into an assignment, or
    assigned from another such element or a math function (x[i] = T(rate) is set-up, and passes);
  - a block copy or fill (std::copy, copy_n, fill, fill_n, memcpy) over such an array.
Names are typed by their declarations in the file and its header; members (x.K) by their
declarations in any header of src/. Index arithmetic (int64_t, int32_t, size_t arrays) passes.

usage: numeric_loops.py SOURCE_DIR  (prints one line per loop found; exit 1 when any)
"""
import re
import sys
from pathlib import Path

# The folders above the seam. convert/ is left out: it transforms checkpoints on the host, once,
# between files (import, export, upcycling, compression); study/, data/ and cli/ hold no tensors
# of a model on a device.
FOLDERS = ["model", "eval", "serve", "train"]

# (file under src/, function): why its loops over numbers are host work, not a device op. Small
# on purpose: one-off transformations of a checkpoint, and work on values already on the host.
ALLOWED = {
    ("model/moe_ct.cpp", "FfnBlock<T>::ct_derive"):
        "initialisation, once per model: new experts copied from the layer's FFN",
    ("model/lora.cpp", "lora_merge"):
        "checkpoint conversion (model merge, export): adapters folded into a new model's weights",
    ("model/delta.cpp", "channel_scales"):
        "checkpoint conversion (compression): a quantized delta's scales from a weight difference",
    ("model/delta.cpp", "delta_gather"):
        "checkpoint conversion (compression): a sparse delta's values from a weight difference",
    ("model/delta.cpp", "delta_lowrank"):
        "checkpoint conversion (compression): a low-rank delta's factors from an SVD",
    ("eval/evalset.cpp", "evaluate"):
        "host scoring: per-sample scores from the logits the decoder hands over, metric sums",
    ("eval/generate.cpp", "sample_distribution"):
        "host sampling from one row of logits already on the host",
    ("eval/generate.cpp", "generate_adjust_logits"):
        "host sampling: OpenAI's biases and penalties on one row of logits already on the host",
    ("train/step_stats.cpp", "step_stats_sum"):
        "host statistics: a step's loss scalars packed for an all-reduce and back",
    ("train/zero.cpp", "zero_pack_shard"):
        "host buffers for MPI: a rank's shard of the parameters packed for the all-gather",
    ("train/zero.cpp", "zero_unpack"):
        "host buffers for MPI: the gathered shards unpacked into the parameters",
}

MATH = re.compile(r"\bstd::(?:exp|exp2|expm1|log|log2|log10|log1p|sqrt|cbrt|tanh|sinh|cosh|sin|"
                  r"cos|tan|pow|fma|erf|erfc|hypot|atan2?)\s*\(")
COPY = re.compile(r"\b(?:std::(?:copy|copy_n|fill|fill_n)|(?:std::)?mem(?:cpy|move|set))\s*\(")
FLOAT = r"float|double|T"
OTHER = r"u?int(?:8|16|32|64)_t|size_t|ptrdiff_t|int|long|unsigned|bool|char|auto|std::string"
# a declaration's type: a scalar, or a vector, span, array or Buffer of one; the groups f1, f2,
# f3 say which scalar types are floating
DECL = re.compile(
    rf"(?<![\w:.>])(?:const\s+)?(?:"
    rf"(?:std::)?(?:vector|span|array)\s*<\s*(?:const\s+)?(?:(?P<f1>{FLOAT})|{OTHER})\b[^<>;]*>"
    rf"|Buffer\s*<\s*(?:(?P<f2>{FLOAT})|{OTHER})\s*>"
    rf"|(?:(?P<f3>{FLOAT})|{OTHER})\b(?!\s*[(:<]))")
NAME = re.compile(r"\s*(?:const\b|\*|&|__restrict__\b|\s)*([A-Za-z_]\w*)\s*(?=[,;=)\[{(:]|$)")


def strip(text):
    """Comments, string and character literals blanked out; line breaks kept."""
    out = re.sub(r"//[^\n]*", "", text)
    out = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), out, flags=re.S)
    out = re.sub(r'"(?:\\.|[^"\\\n])*"', '""', out)
    return re.sub(r"'(?:\\.|[^'\\\n])'", "' '", out)


def declarations(text, names=None):
    """name -> True (a floating type) or False (any other) for the declarations in text, in order:
    a later one wins. A declaration lists its names after the type: `std::vector<int32_t> a(n),
    b(n);` declares two."""
    names = {} if names is None else names
    for m in DECL.finditer(text):
        floating = any(m.group(g) for g in ("f1", "f2", "f3"))
        i = m.end()
        while True:
            n = NAME.match(text, i)
            if n is None or n.group(1) in ("const", "operator"):
                break
            names[n.group(1)] = floating
            i = n.end()
            # the initialiser, up to the next ',' or ';' or ')' at depth 0
            depth = 0
            while i < len(text):
                c = text[i]
                if c in "([{":
                    depth += 1
                elif c in ")]}":
                    if depth == 0:
                        break
                    depth -= 1
                elif c in ",;" and depth == 0:
                    break
                i += 1
            # another name of the same declaration, not the next parameter's type
            if i < len(text) and text[i] == "," and re.match(
                    r",\s*[*&]*\s*[A-Za-z_]\w*\s*[,;=(\[{]", text[i:]):
                i += 1
                continue
            break
    return names


def match_close(text, i, open_c, close_c):
    """Index after the bracket matching text[i] == open_c."""
    depth = 0
    while i < len(text):
        if text[i] == open_c:
            depth += 1
        elif text[i] == close_c:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def statement_end(text, i):
    """Index after the statement starting at or after i: a block, or up to its ';' (a nested
    for/if header's parentheses skipped; an else branch included)."""
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i < len(text) and text[i] == "{":
            i = match_close(text, i, "{", "}")
        else:
            depth = 0
            while i < len(text):
                c = text[i]
                if c in "([":
                    depth += 1
                elif c in ")]":
                    depth -= 1
                elif c == "{" and depth == 0:
                    i = match_close(text, i, "{", "}")
                    if re.match(r"\s*;", text[i:]) is None:
                        break
                    continue
                elif c == ";" and depth == 0:
                    i += 1
                    break
                i += 1
        m = re.match(r"\s*else\b", text[i:])
        if m is None:
            return i
        i += m.end()


def function_at(lines, line):
    """(0-based first line, name) of the function whose definition encloses 1-based line: the
    last line before it that starts at column 0 with NAME( and does not end with ';'."""
    for k in range(line - 1, -1, -1):
        m = re.match(r"^[A-Za-z_].*?([\w:<>~]+)\s*\(", lines[k])
        if m and not lines[k].rstrip().endswith(";") and not lines[k].startswith(
                ("template", "namespace", "struct", "class", "using", "#")):
            return k, re.sub(r"^.*\s", "", m.group(1))
    return 0, "?"


def is_member(text, i):
    """Whether the name at text[i] follows a '.' or '->'."""
    before = text[:i].rstrip()
    return before.endswith(".") or before.endswith("->")


def element_use(body, floating):
    """The first element of a floating-point array in arithmetic, or assigned from another such
    element or a math function (a copy or a map), or None. An element set from scalars
    (x[i] = T(rate)) is host set-up, not a loop over numbers."""
    elements = list(re.finditer(r"(?<![\w:])([A-Za-z_]\w*)\s*\[", body))
    elements = [m for m in elements if floating(m.group(1), is_member(body, m.start()))]
    for m in elements:
        end = match_close(body, m.end() - 1, "[", "]")
        after = body[end:end + 3]
        before = body[max(0, m.start() - 3):m.start()].rstrip()
        if re.match(r"\s*(?:[-+*/]=?)", after) and not re.match(r"\s*(?:->|\+\+|--)", after):
            return m.group(1) + "[]"
        if re.search(r"(?:[-+*/]|[^=!<>]=)$", before) and not before.endswith(("->", "++", "--")):
            return m.group(1) + "[]"
        if re.match(r"\s*=(?!=)", after):
            stop = body.find(";", end)
            rhs = body[end:stop if stop >= 0 else len(body)]
            if MATH.search(rhs) or any(end < e.start() < end + len(rhs) for e in elements):
                return m.group(1) + "[]"
    return None


def members(src):
    """Members of a struct or class in any header of src/: name -> floating, from lines that
    declare (start with a type, end with ';', hold no parameter list)."""
    names = {}
    for h in sorted(src.rglob("*.hpp")):
        for line in strip(h.read_text()).split("\n"):
            if re.match(r"^\s*(?:mutable\s+|static\s+|inline\s+)*(?:const\s+)?(?:std::|Buffer|"
                        rf"{FLOAT}|{OTHER})", line) and line.rstrip().endswith(";") and \
                    "(" not in line.split("=")[0]:
                for name, f in declarations(line).items():
                    names[name] = names.get(name, f) or f
    return names


def loop_problem(body, floating):
    """Why a loop's body works on floating-point arrays, or None."""
    math = MATH.search(body)
    if math:
        return "math function " + math.group(0).rstrip("( ")
    for c in COPY.finditer(body):
        args = body[c.end():match_close(body, c.end() - 1, "(", ")") - 1]
        for a in re.finditer(r"(?<![\w:])[A-Za-z_]\w*\b(?!\s*[(<])", args):
            if floating(a.group(0), is_member(args, a.start())):
                return f"block copy of {a.group(0)}"
    use = element_use(body, floating)
    return "floating-point element " + use if use else None


def scan(src):
    found, used = [], set()
    member_types = members(src)
    for folder in FOLDERS:
        for path in sorted((src / folder).glob("*.cpp")):
            text = strip(path.read_text())
            header = path.with_suffix(".hpp")
            file_types = declarations((strip(header.read_text()) if header.exists() else "") + text)
            lines = text.split("\n")
            rel = f"{folder}/{path.name}"
            end_of_last = -1
            for m in re.finditer(r"\bfor\s*\(", text):
                if m.start() < end_of_last:
                    continue  # inside a loop already looked at: the outermost one counts
                head_end = match_close(text, m.end() - 1, "(", ")")
                body_end = statement_end(text, head_end)
                end_of_last = body_end
                line = text.count("\n", 0, m.start()) + 1
                first, func = function_at(lines, line)
                # names typed by the function's declarations (parameters, locals, the loop's
                # own), then the file's and its header's; members by the headers of src/
                start = sum(len(x) + 1 for x in lines[:first])
                local = declarations(text[start:body_end], dict(file_types))

                def floating(name, member, local=local):
                    return member_types.get(name, False) if member else local.get(name, False)

                why = loop_problem(text[head_end:body_end], floating)
                if why is None:
                    continue
                if (rel, func) in ALLOWED:
                    used.add((rel, func))
                    continue
                found.append(f"src/{rel}:{line}: {func}: {why}")
    for rel, func in sorted(set(ALLOWED) - used):
        if (src / rel).exists():  # a planted tree has none of them
            found.append(f"src/{rel}: {func}: allowed but has no such loop: take it off ALLOWED")
    return found


def main():
    src = Path(sys.argv[1]) / "src"
    found = scan(src)
    for f in found:
        print(f)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
