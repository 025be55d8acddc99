// Runs a GGUF file written by `moelab export gguf` in real llama.cpp (node-llama-cpp's prebuilt
// CPU library, never built or downloaded here) and compares it with moelab:
//   - tokenization: llama.cpp's ids for each prompt equal moelab's (from the reference file);
//   - log-probs: for every prompt position, llama.cpp's next-token probabilities over the whole
//     vocabulary against moelab's log-softmax (max |Δ log p| over tokens with p > --floor);
//   - greedy continuations: llama.cpp's argmax decoding equals `moelab generate --greedy`
//     (min_margin: the smallest log-prob gap between the first and second choice on the way).
// node llama_check.mjs --nlc DIR --model F.gguf --reference REF.json --tol X
//   [--moelab BIN --checkpoint CK --data D --max-new N --min-greedy K --margin-ratio R]
//   [--threads T] [--floor P]
// Prints one summary line (JSON) and exits 1 when a check fails, 2 when node-llama-cpp cannot be
// loaded (the message says why).
import fs from "node:fs";
import path from "node:path";
import {execFileSync} from "node:child_process";
import {pathToFileURL} from "node:url";

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
const threads = Number(args.threads ?? 1);
const tol = Number(args.tol);
const floor = Number(args.floor ?? 1e-6);

let nlc;
try {
  const entry = path.join(args.nlc, "node_modules", "node-llama-cpp", "dist", "index.js");
  nlc = await import(pathToFileURL(entry).href);
} catch (e) {
  console.log(`node-llama-cpp cannot be loaded from ${args.nlc}: ${e.message.split("\n")[0]} (make deps installs it)`);
  process.exit(2);
}
let llama;
try {
  // gpu: false and build: "never": the prebuilt CPU binary or a failure, never a local build
  llama = await nlc.getLlama({gpu: false, build: "never", logLevel: nlc.LlamaLogLevel.error});
} catch (e) {
  console.log(`node-llama-cpp has no usable prebuilt llama.cpp here: ${e.message.split("\n")[0]}`);
  process.exit(2);
}
const model = await llama.loadModel({modelPath: args.model});
const ref = JSON.parse(fs.readFileSync(args.reference, "utf8"));
// moelab's log-softmax rows, float32 [rows, V], in the file next to the reference
const raw = fs.readFileSync(path.join(path.dirname(args.reference), ref.logprobs_file));
const rows = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
for (const p of ref.prompts)
  p.logprobs = p.ids.map((_, i) => rows.subarray((p.row + i) * ref.vocab, (p.row + i + 1) * ref.vocab));
// f32 KV cache and no flash attention: the cache's default f16 rounding would be an error of
// llama.cpp's settings, not of the file
const ctx = await model.createContext({
  contextSize: Math.min(model.trainContextSize, 512), threads, flashAttention: false,
  experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32"});
const seq = ctx.getSequence();

const out = {tokenize_equal: 0, prompts: ref.prompts.length, positions: 0, max_abs_dlogp: 0,
  argmax_equal: 0, greedy_equal: 0, greedy_total: 0, greedy_tokens: 0, min_margin: Infinity,
  greedy_diffs: [], failures: []};
for (const p of ref.prompts) {
  const ids = Array.from(model.tokenize(p.text));
  if (JSON.stringify(ids) === JSON.stringify(p.ids)) out.tokenize_equal++;
  else out.failures.push(`tokenize '${p.text}': llama.cpp ${JSON.stringify(ids)}, moelab ${JSON.stringify(p.ids)}`);
  await seq.clearHistory();
  for (let i = 0; i < p.ids.length; i++) {
    // one token a call (the sequence keeps its cache): one vocabulary-sized Map alive at a time
    const res = await seq.controlledEvaluate([[p.ids[i], {generateNext: {probabilities: true}}]]);
    const probs = res[0]?.next?.probabilities;
    if (!probs || probs.size !== p.logprobs[i].length) {
      out.failures.push(`'${p.text}' position ${i}: ${probs ? probs.size : 0} probabilities`);
      continue;
    }
    let best = -1, bestP = -1;
    for (const [tok, pr] of probs) {
      if (pr > bestP) bestP = pr, best = tok;
      if (pr <= floor && Math.exp(p.logprobs[i][tok]) <= floor) continue;
      out.max_abs_dlogp = Math.max(out.max_abs_dlogp, Math.abs(Math.log(pr) - p.logprobs[i][tok]));
    }
    const lp = p.logprobs[i];
    let arg = 0;
    for (let v = 1; v < lp.length; v++) if (lp[v] > lp[arg]) arg = v;
    if (best === arg) out.argmax_equal++;
    out.positions++;
  }
}
if (!(out.max_abs_dlogp <= tol)) out.failures.push(`max |Δ log p| ${out.max_abs_dlogp} > ${tol}`);

if (args.moelab) {
  const maxNew = Number(args["max-new"] ?? 16);
  for (const p of ref.prompts) {
    const want = execFileSync(args.moelab, ["generate", args.checkpoint, "--data", args.data,
      "--prompt", p.text, "--greedy", "--max-new", String(maxNew), "--threads", String(threads)],
    {encoding: "utf8", stdio: ["ignore", "pipe", "ignore"]});
    await seq.clearHistory();
    const got = [];
    for await (const o of seq.evaluateWithMetadata(p.ids, {probabilities: true}, {temperature: 0})) {
      // the greedy choice's margin: log p of the first over the second most probable token
      const top = [...o.probabilities.values()].slice(0, 2);
      out.min_margin = Math.min(out.min_margin, Math.log(top[0]) - Math.log(top[1]));
      if (model.isEogToken(o.token)) break;
      got.push(o.token);
      if (got.length >= maxNew) break;
    }
    // the continuation as moelab prints it: the text after the prompt's (llama.cpp's SPM
    // detokenizer drops the first piece's leading space, so the prompt is decoded with it)
    const prefix = model.detokenize(p.ids), full = model.detokenize([...p.ids, ...got]);
    const text = full.startsWith(prefix) ? full.slice(prefix.length) : full;
    out.greedy_total++;
    out.greedy_tokens += got.length;
    if (text === want) out.greedy_equal++;
    else out.greedy_diffs.push(`'${p.text}': llama.cpp '${text}', moelab '${want}'`);
  }
  const need = Number(args["min-greedy"] ?? out.greedy_total);
  if (out.greedy_equal < need) out.failures.push(`greedy ${out.greedy_equal}/${out.greedy_total} < ${need}`);
  // --margin-ratio R: the greedy comparison decides only when no choice on the way was closer
  // than R times the largest log-prob difference seen
  const ratio = Number(args["margin-ratio"] ?? 0);
  if (out.min_margin < ratio * out.max_abs_dlogp)
    out.failures.push(`greedy margin ${out.min_margin} < ${ratio} x max |Δ log p|`);
}
console.log(JSON.stringify(out));
await model.dispose();
process.exit(out.failures.length ? 1 : 0);
