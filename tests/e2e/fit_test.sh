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
