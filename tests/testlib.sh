# Shared by the shell tests (source it after `set -u`): a scratch folder removed on exit,
# pass/fail counting, the one-line-error check, and the tally.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# expect_error "description" "regex on stderr" command...: exit status 1 and one stderr line
# that matches.
expect_error() {
  local what=$1 re=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -ne 1 ]; then bad "$what: exit $rc, expected 1"; return; fi
  if [ "$(wc -l <"$tmp/err")" -ne 1 ]; then bad "$what: stderr is not one line: $(cat "$tmp/err")"; return; fi
  if ! grep -Eq -- "$re" "$tmp/err"; then bad "$what: stderr '$(cat "$tmp/err")' does not match '$re'"; return; fi
  ok
}

# finish NAME: prints the tally; the status says whether everything passed.
finish() {
  echo "$1: $pass passed, $fail failed"
  [ "$fail" -eq 0 ]
}
