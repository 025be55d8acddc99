#!/usr/bin/env bash
# moelab generate end to end: a tiny model trained for 20 steps; greedy text is reproducible and
# equals temperature 0, a seed fixes a sample, a stop string cuts the text, and bad input fails
# with one line and exit 1.
set -u
moelab=$1
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2

verses_data "$moelab" 30 10 320 13
tiny_lm "$moelab" 32
ck=run/step_00000020
gen() { "$moelab" generate $ck --data data --threads 2 "$@"; }

# ---- greedy: reproducible, the same at temperature 0, and only new text on stdout
gen --prompt "Verse 3 of chapter" --greedy --max-new 12 >g1.txt 2>g.err || bad "greedy: $(tail -1 g.err)"
gen --prompt "Verse 3 of chapter" --temperature 0 --seed 5 --max-new 12 >g2.txt 2>g.err || bad "t0: $(tail -1 g.err)"
[ -s g1.txt ] && cmp -s g1.txt g2.txt && ok || bad "greedy '$(cat g1.txt)' vs temperature 0 '$(cat g2.txt)'"
grep -q "Verse 3 of chapter" g1.txt && bad "the prompt was printed: $(cat g1.txt)" || ok
printf 'Verse 3 of chapter' >prompt.txt
gen --prompt-file prompt.txt --greedy --max-new 12 >g3.txt 2>g.err && cmp -s g1.txt g3.txt && ok || bad "--prompt-file differs"
gen --prompt "Verse 3 of chapter" --greedy --max-new 4 >g4.txt 2>/dev/null
case "$(cat g1.txt)" in "$(cat g4.txt)"*) ok ;; *) bad "4 greedy tokens '$(cat g4.txt)' do not begin 12 '$(cat g1.txt)'" ;; esac

# ---- sampling: a seed fixes the text; other seeds give other texts
gen --prompt "Verse 3 of chapter" --temperature 1.5 --seed 1 --max-new 20 >s1.txt 2>/dev/null || bad "sample"
gen --prompt "Verse 3 of chapter" --temperature 1.5 --seed 1 --max-new 20 >s1b.txt 2>/dev/null
cmp -s s1.txt s1b.txt && ok || bad "seed 1 twice: '$(cat s1.txt)' vs '$(cat s1b.txt)'"
differ=0
for seed in 2 3 4; do
  gen --prompt "Verse 3 of chapter" --temperature 1.5 --seed $seed --max-new 20 >s$seed.txt 2>/dev/null
  cmp -s s1.txt s$seed.txt || differ=1
done
[ $differ = 1 ] && ok || bad "seeds 1-4 all gave '$(cat s1.txt)'"
gen --prompt "Verse 3 of chapter" --temperature 0.8 --top-k 1 --seed 9 --max-new 12 >k1.txt 2>/dev/null
cmp -s g1.txt k1.txt && ok || bad "top-k 1 '$(cat k1.txt)' is not greedy '$(cat g1.txt)'"

# ---- a stop string: the text before it, and not the stop string itself
text=$(cat g1.txt)
stop=${text:4:2}
want=${text%%"$stop"*}
gen --prompt "Verse 3 of chapter" --greedy --max-new 12 --stop "$stop" --stop "@@" >st.txt 2>/dev/null
[ "$(cat st.txt)" = "$want" ] && ok || bad "stop '$stop': '$(cat st.txt)', expected '$want'"

# ---- bad input: one line, exit 1
p=(--prompt "Verse")
expect_error "temperature < 0" "^moelab: error: generate: --temperature must be >= 0 \(not -1\)$" gen "${p[@]}" --temperature -1
expect_error "top-p 0" "--top-p must be in \(0, 1\] \(not 0\)" gen "${p[@]}" --top-p 0
expect_error "top-p > 1" "--top-p must be in \(0, 1\] \(not 1.5\)" gen "${p[@]}" --top-p 1.5
expect_error "top-k < 0" "--top-k must be >= 0 \(not -2\)" gen "${p[@]}" --top-k -2
expect_error "max-new 0" "--max-new must be at least 1 \(not 0\)" gen "${p[@]}" --max-new 0
expect_error "no prompt" "give one of --prompt TEXT or --prompt-file FILE" gen
expect_error "two prompts" "give one of --prompt TEXT or --prompt-file FILE" gen "${p[@]}" --prompt-file prompt.txt
# the context's end, as the server has it: a prompt longer than the context, or --max-new beyond
# it, is refused; a prompt that leaves less room than --max-new ends where the positions run out
long=$(printf 'Verse 3 of chapter 4: and the king went up %.0s' 1 2 3 4 5)
expect_error "prompt too long" "the prompt has [0-9]+ tokens, more than the model's context \(32\)" gen --prompt "$long" --max-new 4
expect_error "max-new past the context" "--max-new must be at most the model's context \(32\) \(not 33\)" gen "${p[@]}" --max-new 33
gen --prompt "Verse 3 of chapter 4: and the king" --greedy --max-new 30 >end.txt 2>end.err && ok || bad "at the context's end: $(tail -1 end.err)"
grep -Eq "^generate: stopped at the end of the model's context \(32 positions\) after [0-9]+ new tokens \(the prompt has [0-9]+\)$" end.err && ok || bad "context end note: $(cat end.err)"
n_new=$(sed -n 's/.*after \([0-9]*\) new tokens (the prompt has \([0-9]*\)).*/\1 \2/p' end.err)
[ "$(echo $n_new | awk '{print $1 + $2}')" = 33 ] && ok || bad "new + prompt tokens at the context's end: $n_new, expected 33 (the last token is not fed back)"
expect_error "no checkpoint" "nowhere: no such checkpoint folder" "$moelab" generate nowhere --data data "${p[@]}"
mkdir other
(cd other && verses_data "$moelab" 6 5 310 7) || bad "second data dir"
expect_error "other tokenizer" "trained with tokenizer [0-9a-f]{16}, but the data in other/data uses" "$moelab" generate $ck --data other/data "${p[@]}" --max-new 4

finish "generate test"
