// moelab serve: the completions server, until Ctrl-C or SIGTERM.
#include <fmt/format.h>
#include <malloc.h>
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.hpp"
#include "cli/inference.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/signals.hpp"
#include "core/sysinfo.hpp"
#include "core/threads.hpp"
#include "eval/decode.hpp"
#include "serve/server.hpp"

namespace moelab {

namespace {

struct ServeCmdOptions {
  std::string checkpoint, data;
  int threads = 0;
  double grace = 30;
  int64_t bench_score = 0;  // prompt length of the scoring benchmark (0: serve)
  ServeOptions serve;
};

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Scoring speed without HTTP: `slots` random prompts of `len` tokens at a time, three ways in
// alternating rounds: the decoder's batched prefill with the logits of every position and
// their log-softmax (the model work of scoring), the same with the last position's logits only
// (what `moelab bench eval` times), and the engine scoring them as the server does (echo,
// logprobs 1, no new token). One JSON line of the medians, prompt tokens per second.
void serve_bench_score(const InferenceModel& m, const EngineOptions& eo, int64_t len) {
  const Model<float>& model = *m.model;
  const int64_t S = eo.slots, V = model.cfg.vocab_size;
  const int64_t ctx = eo.max_len > 0 ? eo.max_len : model.cfg.max_position_embeddings;
  if (len < 2 || len > ctx) {
    fail(fmt::format("serve: --bench-score must be in [2, {}] tokens (not {})", ctx, len));
  }
  const int64_t vocab = std::min(V, m.data.tokenizer->vocab_size());
  std::vector<int32_t> tokens(static_cast<size_t>(S * len));  // [S, len]
  for (size_t i = 0; i < tokens.size(); i++) {
    tokens[i] = int32_t(rng_u64(11, 0, i) % uint64_t(vocab));
  }
  Decoder dec(model, S, len);
  std::vector<double> sink(static_cast<size_t>(S), 0.0);  // [S] keeps the sums alive
  auto prefill = [&](bool all) {
    std::vector<int64_t> from(static_cast<size_t>(S), all ? 0 : len - 1);
    std::vector<int64_t> to(static_cast<size_t>(S), len);
    dec.prefill_each(tokens, len, from, to, [&](int64_t b, std::span<const float> z) {
      for (int64_t r = 0; r < int64_t(z.size()) / V; r++) {
        float mx = 0;
        double sum = 0;
        dec.device().ops<float>().logsumexp(&mx, &sum, z.data() + r * V, 1, V, true);
        sink[size_t(b)] += double(mx) + std::log(sum);
      }
    });
  };
  Engine engine(model, *m.data.tokenizer, eo);
  auto score = [&] {
    std::vector<std::shared_ptr<Sequence>> seqs;
    for (int64_t b = 0; b < S; b++) {
      SeqSpec sp;
      sp.prompt.assign(tokens.begin() + b * len, tokens.begin() + (b + 1) * len);
      sp.gen.max_new = 0;
      sp.logprobs = 1;
      sp.echo = true;
      seqs.push_back(std::make_shared<Sequence>(std::move(sp)));
    }
    check(engine.submit(seqs), "serve: the benchmark's sequences do not fit the queue");
    for (auto& s : seqs) {
      check(s->wait(0, 0).error.empty(), "serve: a benchmark sequence failed");
    }
  };
  const int64_t reps = std::max<int64_t>(1, 16384 / (S * len));  // passes per timed round
  auto timed = [&](const std::function<void()>& f) {
    const double t0 = time_now_s();
    for (int64_t r = 0; r < reps; r++) {
      f();
    }
    return double(reps * S * len) / (time_now_s() - t0);
  };
  prefill(true);  // warm-up
  score();
  std::vector<double> all, last, served;
  for (int round = 0; round < 5; round++) {
    all.push_back(timed([&] { prefill(true); }));
    last.push_back(timed([&] { prefill(false); }));
    served.push_back(timed(score));
  }
  const double a = median_of(all), l = median_of(last), e = median_of(served);
  fmt::print(
      "{{\"prompt_len\": {}, \"prompts\": {}, \"threads\": {}, \"prefill_chunk\": {}, "
      "\"decoder_all_logits_tokens_per_s\": {:.0f}, \"decoder_last_logits_tokens_per_s\": {:.0f}, "
      "\"engine_scoring_tokens_per_s\": {:.0f}, \"engine_over_decoder_all\": {:.3f}, "
      "\"engine_over_decoder_last\": {:.3f}}}\n",
      len, S, threads_get(), eo.prefill_chunk, a, l, e, e / a, e / l);
}

void serve_cmd(const ServeCmdOptions& o) {
  const EngineOptions& e = o.serve.engine;
  if (e.slots < 1 || e.slots > 4096)
    fail(fmt::format("serve: --slots must be in [1, 4096] (not {})", e.slots));
  if (e.max_len < 0) fail(fmt::format("serve: --ctx must be >= 0 (not {})", e.max_len));
  if (e.queue < 0) fail(fmt::format("serve: --queue must be >= 0 (not {})", e.queue));
  if (e.prefill_chunk < 1 || e.prefill_chunk > 65536) {
    fail(fmt::format("serve: --prefill-chunk must be in [1, 65536] tokens (not {})",
                     e.prefill_chunk));
  }
  if (o.serve.port < 0 || o.serve.port > 65535)
    fail(fmt::format("serve: --port must be in [0, 65535] (not {})", o.serve.port));
  const ServeOptions& v = o.serve;
  if (v.max_connections < 1 || v.max_connections > 16384)
    fail(fmt::format("serve: --max-connections must be in [1, 16384] (not {})", v.max_connections));
  if (v.max_body < 1024 || v.max_body > (int64_t(1) << 30))
    fail(fmt::format("serve: --max-body must be in [1024, 2^30] bytes (not {})", v.max_body));
  for (const auto& [name, x] : {std::pair{"--read-timeout", v.read_timeout},
                                {"--keep-alive", v.keep_alive},
                                {"--write-timeout", v.write_timeout}})
    if (!(x >= 0.1 && x <= 3600))
      fail(fmt::format("serve: {} must be in [0.1, 3600] seconds (not {})", name, x));
  if (!(o.grace >= 0 && o.grace <= 86400))
    fail(fmt::format("serve: --grace must be in [0, 86400] seconds (not {})", o.grace));
  if (v.http_threads < 0 || v.http_threads > v.max_connections)
    fail(fmt::format("serve: --http-threads must be in [0, --max-connections] (not {})",
                     v.http_threads));
  // Each connection holds a file: past the open-file limit accept() fails (EMFILE) and the
  // library retries it, so that nobody gets the 503 of a full server, and the server's own files
  // (the model, its event fds) cannot be opened. The soft limit goes up to the hard one, and the
  // connections must leave kReservedFiles of it.
  constexpr uint64_t kReservedFiles = 64;
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    if (nofile.rlim_cur != nofile.rlim_max) {
      rlimit up = nofile;
      up.rlim_cur = nofile.rlim_max;
      if (::setrlimit(RLIMIT_NOFILE, &up) == 0) nofile = up;
    }
    const uint64_t files = nofile.rlim_cur == RLIM_INFINITY ? UINT64_MAX : nofile.rlim_cur;
    if (files < kReservedFiles + uint64_t(v.max_connections))
      fail(
          fmt::format("serve: --max-connections {} is more than the open-file limit allows ({} "
                      "files, ulimit -n; at most {} connections, {} files are kept for the "
                      "server)",
                      v.max_connections, files, files > kReservedFiles ? files - kReservedFiles : 0,
                      kReservedFiles));
  }
  // Large allocations (request bodies, token lists) are mapped and unmapped on their own rather
  // than left in the heaps of the request threads (glibc would raise this threshold as they go)
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
  threads_set(o.threads > 0 ? o.threads : omp_get_num_procs());
  const InferenceModel m = inference_load(o.checkpoint, o.data);
  if (o.bench_score > 0) {
    serve_bench_score(m, o.serve.engine, o.bench_score);
    return;
  }
  // Ctrl-C / SIGTERM: a graceful stop. The scope ends with the first signal, so that a second
  // one ends the process at once by its default action (the scope's own message for a second
  // signal speaks of a trainer's checkpoints); the stop line below says so.
  std::optional<StopScope> stop_scope(std::in_place);
  Server server(*m.model, *m.data.tokenizer, o.serve);
  const int port = server.bind();
  const EngineStats st = server.stats();
  const double cache_mb = double(st.cache_bytes) / 1e6;
  fmt::print(stderr,
             "serving {} on http://{}:{} as \"{}\": {} slots x {} positions (KV cache {:.1f} MB), "
             "queue {}\n",
             o.checkpoint, o.serve.host, port, o.serve.model_name, st.slots, st.max_len, cache_mb,
             st.queue);
  std::thread listener([&] { server.run(); });
  while (!signals_stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  stop_scope.reset();
  fmt::print(stderr,
             "serve: stopping (running requests finish, at most {:.0f} s; a second signal ends "
             "the server at once, without answering them)\n",
             o.grace);
  // The last resort: the server ends within its grace and a margin even if a thread never
  // returns (a model step that does not end); the exit status is the same as a clean stop's.
  std::thread([grace = o.grace] {
    std::this_thread::sleep_for(std::chrono::duration<double>(grace + 5));
    fmt::print(stderr, "serve: still stopping {:.0f} s after the grace; exiting\n", 5.0);
    std::fflush(stderr);
    std::_Exit(0);
  }).detach();
  server.stop(o.grace);
  listener.join();
  const EngineStats end = server.stats();
  fmt::print(stderr, "serve: stopped after {} sequences ({} prompt tokens, {} new tokens)\n",
             end.sequences, end.prompt_tokens, end.new_tokens);
}

}  // namespace

void command_serve(CLI::App& app, Commands& c) {
  auto o = std::make_shared<ServeCmdOptions>();
  auto* cmd = app.add_subcommand("serve", "an OpenAI-style completions server for a checkpoint");
  cmd->add_option("checkpoint", o->checkpoint, "checkpoint folder (RUN/step_N)")->required();
  cmd->add_option("--data", o->data, "data directory the model was trained on (its tokenizer)")
      ->required();
  cmd->add_option("--host", o->serve.host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", o->serve.port, "port (0: any free one)")->capture_default_str();
  cmd->add_option("--name", o->serve.model_name, "the model's name in the API")
      ->capture_default_str();
  cmd->add_option("--slots", o->serve.engine.slots, "sequences decoded together (KV-cache slots)")
      ->capture_default_str();
  cmd->add_option("--ctx", o->serve.engine.max_len,
                  "positions per sequence (0: the model's max_position_embeddings)")
      ->capture_default_str();
  cmd->add_option("--queue", o->serve.engine.queue,
                  "sequences waiting for a slot at most; beyond it requests get 503")
      ->capture_default_str();
  cmd->add_option("--prefill-chunk", o->serve.engine.prefill_chunk,
                  "prompt tokens per pass of the model at most; a longer prompt is prefilled in "
                  "chunks, each pass also advancing every decoding sequence by one token")
      ->capture_default_str();
  cmd->add_option("--bench-score", o->bench_score,
                  "instead of serving: scoring speed of --slots prompts of this many tokens "
                  "(decoder prefill against the engine, no HTTP), one JSON line");
  cmd->add_option("--http-threads", o->serve.http_threads,
                  "connection threads started at once (0: slots + 4); more start on demand")
      ->capture_default_str();
  cmd->add_option("--max-connections", o->serve.max_connections,
                  "connections served at once; beyond, a new one gets a 503 and is closed")
      ->capture_default_str();
  cmd->add_option("--max-body", o->serve.max_body,
                  "bytes of a request body at most; a larger one gets a 413 unread")
      ->capture_default_str();
  cmd->add_option("--read-timeout", o->serve.read_timeout,
                  "seconds a request may take to arrive whole (line, headers, body); then 408")
      ->capture_default_str();
  cmd->add_option("--keep-alive", o->serve.keep_alive,
                  "seconds an idle connection is kept for its next request")
      ->capture_default_str();
  cmd->add_option("--write-timeout", o->serve.write_timeout,
                  "seconds a response may wait for the client to read it; then the "
                  "connection is closed (a stream is cancelled)")
      ->capture_default_str();
  cmd->add_option("--grace", o->grace, "seconds running requests get to finish on a stop")
      ->capture_default_str();
  cmd->add_flag("!--quiet", o->serve.log_requests, "no line per request on stderr");
  cmd->add_flag("--allow-unknown-fields", o->serve.allow_unknown_fields,
                "ignore unknown fields of /v1/completions (each logged once) instead of a 400");
  cmd->add_option("--threads", o->threads, "compute threads (default: all cores)");
  c.add(cmd, [o] { return serve_cmd(*o), 0; });
}

}  // namespace moelab
