// llama.cpp's greedy generation speed for bench/gguf_speed.sh, as moelab bench eval measures its
// own: per sample a fresh sequence, PROMPT prompt tokens, then NEW greedy tokens (never stopping
// at an end token); generated tokens per second of the whole (prompt + new). With BATCH > 1 the
// context holds BATCH sequences and BATCH samples run at once (node-llama-cpp decodes the
// sequences' tokens together in one batch), SAMPLES / BATCH rounds.
// node gguf_speed.mjs NLC_DIR MODEL.gguf THREADS SAMPLES PROMPT NEW [BATCH=1]  ->  one JSON line
import path from "node:path";
import {pathToFileURL} from "node:url";

const [nlcDir, modelPath, threads, samples, promptLen, newTokens, batchArg] = process.argv.slice(2);
const batch = Number(batchArg ?? 1);
const nlc = await import(pathToFileURL(path.join(nlcDir, "node_modules", "node-llama-cpp", "dist", "index.js")).href);
const llama = await nlc.getLlama({gpu: false, build: "never", logLevel: nlc.LlamaLogLevel.error});
const model = await llama.loadModel({modelPath});
// node-llama-cpp's defaults for the cache (f16 K and V) and flash attention: what a user gets;
// contextSize is per sequence
const ctx = await model.createContext({contextSize: Number(promptLen) + Number(newTokens) + 8,
  threads: Number(threads), batchSize: 512, sequences: batch});
const seqs = Array.from({length: batch}, () => ctx.getSequence());
const nVocab = model.fileInfo.metadata.tokenizer.ggml.tokens.length;
// fixed pseudo-random prompt ids (as moelab bench eval draws its own), past the first 3
// (control), one prompt per sequence
let s = 12345;
const prompts = seqs.map(() => Array.from({length: Number(promptLen)},
  () => (s = (s * 1103515245 + 12345) % 2147483648, 3 + (s % (nVocab - 3)))));
async function one(seq, prompt) {
  await seq.clearHistory();
  let n = 0;
  for await (const t of seq.evaluate(prompt, {temperature: 0})) {
    void t;
    if (++n >= Number(newTokens)) break;
  }
  return n;
}
const round = async () => (await Promise.all(seqs.map((q, i) => one(q, prompts[i])))).reduce((a, b) => a + b, 0);
await round();  // warm-up
const t0 = process.hrtime.bigint();
let generated = 0;
for (let i = 0; i < Math.ceil(Number(samples) / batch); i++) generated += await round();
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
console.log(JSON.stringify({batch, generated, seconds, generated_tokens_per_s: generated / seconds}));
await model.dispose();
