#!/usr/bin/env bash
# The HTML view (docs/view.md) in headless Chromium, opened from file:// as a user opens it:
# a run's page written while it trains (reloading itself, the current step), after an interrupt
# (no reload, says so), after its end, and after a divergence; a forgetting study's page while
# its queue goes and after its report (tables, readings, figures inline); `moelab study view`
# writing them again; every page loads without a console message, text is escaped, and a
# screenshot is written. Fails where Chromium (Debian's chromium) is missing.
set -u
moelab=$1
here=$(cd "$(dirname "$0")" && pwd)
shot="$here/../../scripts/view_screenshot.sh"
source "$here/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2
chromium=${MOELAB_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  echo "FAIL: $chromium is missing: the HTML view is tested in Debian's chromium (make test installs it; scripts/apt_install.sh chromium)"
  exit 1
fi

# dom NAME PAGE: the page's DOM after its scripts ran (NAME.dom); a console line fails it.
dom() {
  local name=$1 page=$2
  mkdir -p "prof_$name"
  timeout 60 "$chromium" --headless --no-sandbox --disable-gpu --user-data-dir="$tmp/prof_$name" \
    --enable-logging=stderr --v=0 --dump-dom "file://$(realpath "$page")" >"$name.dom" 2>"$name.chromium.log"
  local rc=$?
  if [ $rc -ne 0 ] || [ ! -s "$name.dom" ]; then bad "$name: chromium exit $rc: $(tail -1 "$name.chromium.log")"; return 1; fi
  if grep -q ':CONSOLE' "$name.chromium.log"; then bad "$name: console: $(grep -m1 ':CONSOLE' "$name.chromium.log")"; return 1; fi
  # the age line is the page's script's: it ran
  grep -Eq 'id="age"[^>]*>written [0-9]+ s ago' "$name.dom" && ok || bad "$name: the page's script did not run"
}
# has NAME REGEX WHAT: the DOM of NAME matches
has() { grep -Eq -- "$2" "$1.dom" && ok || bad "$1: $3 (no match for '$2')"; }
hasnt() { grep -Eq -- "$2" "$1.dom" && bad "$1: $3 (matched '$2')" || ok; }

verses_data "$moelab" 8 30 320 7

# ---- a run's page while it trains and after an interrupt (a run far longer than the wait for
# its first page: it is interrupted once that is seen), then a run's page at its end
{
  tiny_config "${tiny_moe[@]}" run.dir=long phases.steps=30000
  printf '[[phases]]\nname = "B"\nsubset = "B"\nsteps = 100\n[eval]\nevery = 100\nbatches = 2\n'
} >long.toml
MOELAB_VIEW_SECONDS=0.2 "$moelab" train long.toml >train1.log 2>&1 &
pid=$!
caught=
for _ in $(seq 1 600); do
  if grep -q 'data-state="running"' long/view.html 2>/dev/null && ! grep -q 'data-step="0"' long/view.html; then
    cp long/view.html long/view-running.html
    caught=1
    break
  fi
  sleep 0.05
done
[ -n "$caught" ] && ok || bad "no page written while the run trained"
kill -INT $pid
wait $pid
rc=$?
[ $rc = 130 ] && ok || bad "interrupted run: exit $rc, expected 130 ($(tail -1 train1.log))"
if [ -n "$caught" ]; then
  dom running long/view-running.html
  step=$(sed -n 's/.*data-step="\([0-9]*\)".*/\1/p' running.dom | head -1)
  has running "<b id=\"step\">step $step / 30100</b>" "the banner's current step"
  [ "${step:-0}" -gt 0 ] && [ "${step:-0}" -lt 30100 ] && ok || bad "running page at step '$step'"
  grep -q '<meta http-equiv="refresh" content="2">' long/view-running.html && ok || bad "the running page does not reload itself"
  has running 'tokens/s</span>' "tokens/s in the banner"
  has running '<span>ETA [0-9]' "ETA in the banner"
fi
dom interrupted long/view.html
has interrupted 'data-state="interrupted"' "the interrupted run's state"
has interrupted 'interrupted at step [0-9]+ of 30100' "the interrupted run's message"
grep -q 'http-equiv="refresh"' long/view.html && bad "the interrupted run's page still reloads" || ok

{
  tiny_config "${tiny_moe[@]}" phases.steps=60
  printf '[[phases]]\nname = "B"\nsubset = "B"\nsteps = 20\n[eval]\nevery = 10\nbatches = 2\n'
} >moe.toml
MOELAB_VIEW_SECONDS=0.2 "$moelab" train moe.toml >train2.log 2>&1 || bad "train: $(tail -1 train2.log)"
dom finished run/view.html
has finished 'data-state="finished" data-step="80" data-total="80"' "the finished run's state"
has finished '<b id="step">step 80 / 80</b>' "the finished run's step"
grep -q 'http-equiv="refresh"' run/view.html && bad "the finished run's page still reloads" || ok
# the figures: loss, learning rate, router load, expert load, router losses, speed, gradient norm
[ "$(grep -o '<svg' finished.dom | wc -l)" -ge 7 ] && ok || bad "the run's page has $(grep -o '<svg' finished.dom | wc -l) figures, expected 7"
for what in '>loss</figcaption>' '>learning rate</figcaption>' 'load per layer</figcaption>' \
  '>expert load at step 80</figcaption>' 'validation loss A' '<path d="M'; do
  has finished "$what" "figure part $what"
done
"$shot" run/view.html run.png 1200 1500 && ok || bad "screenshot"
[ "$(head -c 4 run.png | tail -c 3)" = PNG ] && [ "$(stat -c %s run.png)" -gt 20000 ] && ok || bad "screenshot run.png is not a PNG of the page"

MOELAB_VIEW_SECONDS=soon expect_error "a bad MOELAB_VIEW_SECONDS" "MOELAB_VIEW_SECONDS: 'soon' is not a number" \
  "$moelab" train moe.toml --set run.dir=never
[ -e never ] && bad "a refused run left its folder" || ok

# a page that cannot be written is a warning (once while the run goes, once at its end), not
# the run's failure
mkdir -p blocked/view.html
tiny_config run.dir=blocked >blocked.toml
MOELAB_VIEW_SECONDS=0 "$moelab" train blocked.toml >blocked.log 2>&1 && [ -d blocked/step_00000020 ] && ok ||
  bad "a run whose page cannot be written: $(tail -1 blocked.log)"
[ "$(grep -c "^warning: the run's page was not written: blocked/view.html" blocked.log)" = 2 ] && ok ||
  bad "the page's warnings: $(grep -c warning blocked.log), expected 2"

# ---- a run that diverges: the page says it failed; its folder's name is escaped
tiny_config run.dir="we<i>rd&'run" schedule.max_lr=1e12 schedule.min_lr=1e11 >bad.toml
"$moelab" train bad.toml >bad.log 2>&1 && bad "a diverging run succeeded" || ok
dom failed "we<i>rd&'run/view.html"
has failed 'data-state="failed"' "the diverged run's state"
has failed 'not finite' "the diverged run's reason"
has failed 'Run we&lt;i&gt;rd&amp;.run' "the escaped folder name"
hasnt failed '<i>rd' "an unescaped folder name"

# ---- a forgetting study: its page while the queue goes, then with the report
mkdir s && cd s
titles_data "$moelab" 48
{
  tiny_config run.dir=study "${titles_run[@]}" phases.steps=120
  printf '[[phases]]\nname = "B"\nsubset = "B"\nsteps = 40\n[eval]\nevery = 40\nbatches = 2\nforgetting_every = 20\n'
  printf '[study]\nexperts = [1, 4]\ntop_k = 2\nentities = "ents.tsv"\ntop = 100\nbottom = 100\nprompt = 8\ntarget = 8\nmax_per_entity = 4\n'
} >exp.toml
MOELAB_VIEW_SECONDS=0.2 "$moelab" study forgetting exp.toml >study.log 2>&1 &
pid=$!
caught=
for _ in $(seq 1 1200); do
  if grep -q 'data-state="running"' study/view.html 2>/dev/null && [ -f study/E1_s5/view.html ]; then
    cp study/view.html study/view-running.html
    caught=1
    break
  fi
  sleep 0.05
done
wait $pid || bad "study: $(tail -1 study.log)"
if [ -n "$caught" ]; then
  ok
  dom study_running study/view-running.html
  has study_running '<a href="E1_s5/view.html">E1_s5</a>' "the link to the running run's page"
  has study_running 'of 2 runs finished' "the study's progress"
  grep -q '<meta http-equiv="refresh"' study/view-running.html && ok || bad "the study's page does not reload while it runs"
else
  bad "no study page written while the study ran"
fi
dom study study/view.html
has study 'data-state="finished" data-done="2" data-runs="2"' "the study's state"
has study '<a href="E4_s5/view.html">E4_s5</a>' "the link to a run's page"
has study '<td>M_ex right after A</td>' "the report's table"
has study '<h3>Reading</h3>' "the report's reading"
[ "$(grep -o '<img alt="[^"]*" src="data:image/svg+xml;base64,' study.dom | wc -l)" -ge 5 ] && ok ||
  bad "the report's figures are not inline"
hasnt study 'src="(http|file|[a-z_]+\.(png|svg))' "a figure fetched from outside the page"
grep -q 'http-equiv="refresh"' study/view.html && bad "the reported study's page still reloads" || ok
grep -q 'href="../view.html">the study' study/E1_s5/view.html && ok || bad "a run's page does not link its study's"

# ---- moelab study view writes them again
rm study/view.html study/E4_s5/view.html
"$moelab" study view study >view.log 2>&1 || bad "study view: $(tail -1 view.log)"
grep -qx 'study/view.html' view.log && grep -qx 'study/E4_s5/view.html' view.log && ok || bad "study view's list: $(cat view.log)"
dom again study/view.html
has again '<td>M_ex right after A</td>' "the rewritten page's report"
dom again_run study/E4_s5/view.html
has again_run 'data-state="finished" data-step="160"' "the rewritten run page"
has again_run 'href="../view.html">the study' "the rewritten run page's link to its study's"
expect_error "study view of a folder without runs" "corpus: neither a run folder" "$moelab" study view corpus

finish html
