#!/usr/bin/env bash
# moelab fit: the Chinchilla replication through the command line (full 4,500-start grid), its
# outputs, and bad input (one line on stderr, exit 1).
set -u
source "$(dirname "$0")/testlib.sh"
moelab=$1
golden=${2:-}/tests/data/chinchilla_approach3.csv

if [[ -f $golden ]]; then
  "$moelab" fit "$golden" --drop-highest 5 --bootstrap 3 --out "$tmp/g" --no-plots >"$tmp/out" 2>&1 \
    && ok || bad "fit on the golden CSV failed: $(cat "$tmp/out")"
  # Published: alpha 0.3473, beta 0.3672, E 1.817 (printed as exp of e).
  awk '$1 == "alpha" { a = $2 } $1 == "beta" { b = $2 } $1 == "e" { e = $NF }
       END { d1 = a - 0.3473; d2 = b - 0.3672; d3 = e - 1.817
             exit !(d1 * d1 < 1e-6 && d2 * d2 < 1e-6 && d3 * d3 < 1e-5) }' "$tmp/out" \
    && ok || bad "golden coefficients: $(cat "$tmp/out")"
  grep -q "chinchilla law on 240 runs" "$tmp/out" && ok || bad "240 runs: $(head -1 "$tmp/out")"
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); \
assert abs(j['fit']['coefficients']['alpha']['value'] - 0.3473) < 1e-3; \
assert len(j['fit']['coefficients']['alpha']['ci95']) == 2" "$tmp/g/fit.json" \
    && ok || bad "fit.json"
  [[ -f $tmp/g/fit_observed.gp && -f $tmp/g/fit_isoflop_0.gp ]] && ok || bad "figure scripts"
else
  bad "no $golden: it is part of the repository"
fi

# The sparsest runs are held out only where enough sparsities remain to identify the S terms;
# the largest budget is held out as well, and the report says how the law predicts it.
/usr/bin/python3 - "$tmp" <<'PY'
import math, sys
for n_s, name in ((3, "s3"), (4, "s4")):
    with open(f"{sys.argv[1]}/{name}.csv", "w") as f:
        f.write("params,tokens,loss,sparsity,budget,flops\n")
        for c in (1e15, 3e15, 1e16):
            for s in (0, 0.5, 0.75, 0.875)[:n_s]:
                for n in (1e6, 2e6, 4e6, 8e6):
                    d = c / (6 * n)
                    loss = 2 + 300 / n ** 0.4 + 400 / d ** 0.35 - 0.05 * math.log(1 / (1 - s))
                    f.write(f"{n},{d},{loss},{s},{c},{c}\n")
PY
"$moelab" fit "$tmp/s3.csv" --small-grid --bootstrap 0 --no-plots >"$tmp/s3.out" 2>&1 &&
  grep -q "^no sparsity held out: 3 sparsities" "$tmp/s3.out" &&
  grep -q "^law fitted without C = 1e+16 (24 runs), tested on its 12 runs" "$tmp/s3.out" &&
  grep -q "sparsity law on 36 runs" "$tmp/s3.out" && ok || bad "3 sparsities: $(head -3 "$tmp/s3.out")"
"$moelab" fit "$tmp/s4.csv" --small-grid --bootstrap 0 --no-plots >"$tmp/s4.out" 2>&1 &&
  grep -q "^held out: 12 runs at S = 0.875" "$tmp/s4.out" && ok || bad "4 sparsities: $(head -3 "$tmp/s4.out")"

# Bad inputs: one stderr line naming file, line and column; exit 1.
printf 'params,loss\n1,2\n' >"$tmp/a.csv"
expect_error "missing column" "a.csv: line 1: column 'tokens' is missing" "$moelab" fit "$tmp/a.csv"
printf 'params,tokens,loss\n1e8,2e9,3\n1e8,x,3\n' >"$tmp/b.csv"
expect_error "not a number" "b.csv: line 3: column 'tokens': 'x' is not a number" "$moelab" fit "$tmp/b.csv"
printf 'params,tokens,loss,sparsity\n1e8,2e9,3,1.5\n' >"$tmp/c.csv"
expect_error "S outside" "c.csv: line 2: column 'sparsity': 1.5 is outside" "$moelab" fit "$tmp/c.csv"
printf 'params,tokens,loss\n1e8,2e9,3\n' >"$tmp/d.csv"
expect_error "dense data" "needs runs at more than one sparsity" "$moelab" fit "$tmp/d.csv" --law sparsity
expect_error "no file" "missing.csv" "$moelab" fit "$tmp/missing.csv"
finish fit
