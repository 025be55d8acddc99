// llama.cpp's batch-1 greedy generation speed for bench/gguf_speed.sh, as moelab bench eval
// measures its own: per sample a fresh sequence, PROMPT prompt tokens, then NEW greedy tokens
// (never stopping at an end token); generated tokens per second of the whole (prompt + new).
// node gguf_speed.mjs NLC_DIR MODEL.gguf THREADS SAMPLES PROMPT NEW  ->  one JSON line
import path from "node:path";
import {pathToFileURL} from "node:url";

const [nlcDir, modelPath, threads, samples, promptLen, newTokens] = process.argv.slice(2);
const nlc = await import(pathToFileURL(path.join(nlcDir, "node_modules", "node-llama-cpp", "dist", "index.js")).href);
const llama = await nlc.getLlama({gpu: false, build: "never", logLevel: nlc.LlamaLogLevel.error});
const model = await llama.loadModel({modelPath});
// node-llama-cpp's defaults for the cache (f16 K and V) and flash attention: what a user gets
const ctx = await model.createContext({contextSize: Number(promptLen) + Number(newTokens) + 8,
  threads: Number(threads), batchSize: 512});
const seq = ctx.getSequence();
const nVocab = model.fileInfo.metadata.tokenizer.ggml.tokens.length;
let s = 12345;
// fixed pseudo-random prompt ids (as moelab bench eval draws its own), past the first 3 (control)
const prompt = Array.from({length: Number(promptLen)}, () => (s = (s * 1103515245 + 12345) % 2147483648, 3 + (s % (nVocab - 3))));
async function one() {
  await seq.clearHistory();
  let n = 0;
  for await (const t of seq.evaluate(prompt, {temperature: 0})) {
    void t;
    if (++n >= Number(newTokens)) break;
  }
  return n;
}
await one();  // warm-up
const t0 = process.hrtime.bigint();
let generated = 0;
for (let i = 0; i < Number(samples); i++) generated += await one();
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
console.log(JSON.stringify({generated, seconds, generated_tokens_per_s: generated / seconds}));
await model.dispose();
