// The server: the decoder's slots against whole-batch decoding, and the completions API driven
// over loopback HTTP with the request shapes lm-evaluation-harness sends (its local-completions
// model): summed prompt log-probabilities against the teacher-forced ones of the training
// forward in double, is_greedy, greedy generation with stop strings against `generate`,
// concurrent requests against one-at-a-time answers, refusals (400, 503), the tokenizer routes.
#include <gtest/gtest.h>
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <thread>
#include <tuple>

#include "core/rng.hpp"
#include "eval/decode.hpp"
#include "eval/generate.hpp"
#include "eval/metrics.hpp"
#include "letter_tokenizer.hpp"
#include "serve/api.hpp"
#include "serve/server.hpp"
#include "test_util.hpp"
#include "tiny_config.hpp"

using namespace moelab;
using json = nlohmann::json;

namespace {

std::vector<int32_t> random_ids(int64_t n, uint64_t seed, int32_t below = 52) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) p[size_t(i)] = int32_t(rng_u64(seed, 1, uint64_t(i)) % below);
  return p;
}

// log p(ids[t] | ids[<t]) for t >= 1 from the training forward of a double copy of the model
std::vector<double> teacher_forced(const Model<float>& m, const std::vector<int32_t>& ids,
                                   std::vector<int32_t>* argmax = nullptr) {
  const int64_t T = int64_t(ids.size()) - 1, V = m.cfg.vocab_size;
  Model<double> dm(m.cfg, 1, T);
  std::copy(m.params.begin(), m.params.end(), dm.params.begin());
  dm.forward(std::span(ids).first(size_t(T)), std::span(ids).subspan(1));
  const auto z = dm.logits();
  std::vector<double> lp;
  for (int64_t t = 0; t < T; t++) {
    const double* r = z.data() + t * V;
    const double mx = *std::max_element(r, r + V);
    double s = 0;
    for (int64_t v = 0; v < V; v++) s += std::exp(r[v] - mx);
    lp.push_back(r[ids[size_t(t + 1)]] - mx - std::log(s));
    if (argmax) argmax->push_back(int32_t(std::max_element(r, r + V) - r));
  }
  return lp;
}

// A server on a free loopback port for the test's lifetime.
struct TestServer {
  Server server;
  int port;
  std::thread thread;
  TestServer(const Model<float>& m, const Tokenizer& tok, int64_t slots, int64_t queue,
             bool allow_unknown_fields = false)
      : server(m, tok,
               ServeOptions{.host = "127.0.0.1",
                            .port = 0,
                            .model_name = "tiny",
                            .engine = {.slots = slots, .queue = queue},
                            .log_requests = false,
                            .allow_unknown_fields = allow_unknown_fields}),
        port(server.bind()),
        thread([this] { server.run(); }) {}
  ~TestServer() {
    server.stop(5);
    thread.join();
  }
  httplib::Result post(const std::string& path, const json& body) const {
    httplib::Client cli("127.0.0.1", port);
    cli.set_read_timeout(60, 0);
    return cli.Post(path, body.dump(), "application/json");
  }
  httplib::Result post_raw(const std::string& path, const std::string& body) const {
    httplib::Client cli("127.0.0.1", port);
    return cli.Post(path, body, "application/json");
  }
  json get(const std::string& path) const {
    httplib::Client cli("127.0.0.1", port);
    auto r = cli.Get(path);
    EXPECT_TRUE(r && r->status == 200) << path;
    return r ? json::parse(r->body) : json();
  }
};

json ok_json(const httplib::Result& r) {
  EXPECT_TRUE(r) << "no response";
  if (!r) return json();
  EXPECT_EQ(r->status, 200) << r->body;
  return json::parse(r->body);
}

constexpr int32_t kEot = 60;

}  // namespace

// ----------------------------------------------------------------------------
// the decoder's slots

TEST(DecoderSlots, SequencesAtTheirOwnPositionsEqualOneAtATime) {
  for (bool moe : {false, true}) {
    const ModelConfig c = test::tiny_lm(moe);
    Model<float> m(c, 1, 1);
    m.init_weights(5);
    const int64_t N = 10;
    const std::vector<int64_t> lens = {7, 3, 12};
    std::vector<std::vector<int32_t>> want;  // greedy, one sequence at a time
    for (size_t i = 0; i < lens.size(); i++) {
      Decoder one(m, 1, lens[i] + N);
      want.push_back(one.greedy(random_ids(lens[i], i), lens[i], N));
    }
    // three sequences in slots 2, 0, 3 of four, stepped together from their own positions
    Decoder dec(m, 4, 32);
    const std::vector<int64_t> slot = {2, 0, 3};
    std::vector<int32_t> next(3);
    std::vector<int64_t> pos(3);
    for (size_t i = 0; i < 3; i++) {
      dec.prefill_slot(slot[i], random_ids(lens[i], i), lens[i] - 1,
                       [&](int64_t, std::span<const float> z) {
                         next[i] = logits_argmax(z.data(), c.vocab_size);
                       });
      pos[i] = lens[i];
    }
    std::vector<std::vector<int32_t>> got(3);
    for (int64_t s = 0; s < N; s++) {
      for (size_t i = 0; i < 3; i++) got[i].push_back(next[i]);
      const auto z = dec.step_slots(next, pos, slot);
      for (size_t i = 0; i < 3; i++)
        next[i] = logits_argmax(z.data() + i * size_t(c.vocab_size), c.vocab_size), pos[i]++;
    }
    for (size_t i = 0; i < 3; i++) EXPECT_EQ(got[i], want[i]) << "sequence " << i << " moe " << moe;
  }
}

// ----------------------------------------------------------------------------
// scoring as lm-evaluation-harness asks for it

TEST(Serve, HarnessLoglikelihoodEqualsTeacherForcedAndIsGreedyAgrees) {
  const ModelConfig c = test::tiny_lm(true);
  Model<float> m(c, 1, 1);
  m.init_weights(7);
  LetterTokenizer tok(61, kEot);  // every id of the model: a greedy continuation may use any
  TestServer s(m, tok, 4, 64);
  // (context, continuation) pairs; the second continuation is the model's own greedy one
  std::vector<std::vector<int32_t>> reqs;
  std::vector<int64_t> ctxlen;
  for (int i = 0; i < 4; i++) {
    auto ctx = random_ids(5 + 3 * i, 100 + i);
    std::vector<int32_t> cont = random_ids(1 + i, 200 + i);
    if (i % 2 == 1) {  // greedy continuation, token by token
      cont.clear();
      auto seq = ctx;
      for (int k = 0; k < 1 + i; k++) {
        std::vector<int32_t> am;
        teacher_forced(
            m,
            [&] {
              auto t = seq;
              t.push_back(0);
              return t;
            }(),
            &am);
        seq.push_back(am.back()), cont.push_back(am.back());
      }
    }
    ctxlen.push_back(int64_t(ctx.size()));
    ctx.insert(ctx.end(), cont.begin(), cont.end());
    reqs.push_back(ctx);
  }
  const json body = {{"model", "tiny"}, {"prompt", reqs}, {"temperature", 0}, {"max_tokens", 1},
                     {"logprobs", 1},   {"seed", 1234},   {"echo", true}};
  json res = ok_json(s.post("/v1/completions", body));
  auto choices = res["choices"];
  ASSERT_EQ(choices.size(), reqs.size());
  std::sort(choices.begin(), choices.end(),
            [](const json& a, const json& b) { return a["index"] < b["index"]; });
  for (size_t i = 0; i < reqs.size(); i++) {
    const json& lp = choices[i]["logprobs"];
    ASSERT_EQ(lp["token_logprobs"].size(), reqs[i].size() + 1) << "prompt + 1 generated";
    EXPECT_TRUE(lp["token_logprobs"][0].is_null());
    double sum = 0;
    bool greedy = true;
    for (size_t t = size_t(ctxlen[i]); t + 1 < lp["token_logprobs"].size(); t++) {
      const double v = lp["token_logprobs"][t];
      sum += v;
      double best = -INFINITY;
      for (auto& [k, x] : lp["top_logprobs"][t].items()) best = std::max(best, x.get<double>());
      greedy = greedy && v == best;  // exactly as the harness compares
    }
    std::vector<int32_t> am;
    const auto ref = teacher_forced(m, reqs[i], &am);
    double want = 0;
    bool want_greedy = true;
    for (size_t t = size_t(ctxlen[i]); t < reqs[i].size(); t++)
      want += ref[t - 1], want_greedy = want_greedy && am[t - 1] == reqs[i][t];
    EXPECT_NEAR(sum, want, 1e-4) << "request " << i;
    EXPECT_EQ(greedy, want_greedy) << "request " << i;
    EXPECT_EQ(greedy, i % 2 == 1) << "request " << i;
    // every prompt token's log-probability, not only the continuation's
    for (size_t t = 1; t < reqs[i].size(); t++)
      EXPECT_NEAR(lp["token_logprobs"][t].get<double>(), ref[t - 1], 1e-4) << i << " " << t;
  }
  EXPECT_EQ(res["usage"]["prompt_tokens"], 5 + 8 + 11 + 14 + 1 + 2 + 3 + 4);
}

TEST(Serve, HarnessGreedyGenerationWithStopEqualsGenerate) {
  const ModelConfig c = test::tiny_lm(false);
  Model<float> m(c, 1, 1);
  m.init_weights(3);
  LetterTokenizer tok(52, kEot);
  TestServer s(m, tok, 3, 64);
  for (int i = 0; i < 3; i++) {
    const auto prompt = random_ids(6 + i, 300 + i);
    const GenerateResult full = generate(m, tok, prompt, {.max_new = 20, .greedy = true});
    // a stop string from the middle of the greedy text, as `until` would be
    const std::string stop = full.text.substr(5 + size_t(i), 2);
    const GenerateResult want =
        generate(m, tok, prompt, {.max_new = 20, .greedy = true, .stop = {stop}});
    const json body = {{"prompt", {prompt}},
                       {"max_tokens", 20},
                       {"temperature", 0},
                       {"stop", {stop}},
                       {"seed", 1234}};
    const json res = ok_json(s.post("/v1/completions", body));
    EXPECT_EQ(res["choices"][0]["text"], want.text) << "stop " << stop;
    EXPECT_EQ(res["choices"][0]["finish_reason"], "stop");
    // the same as text, and streamed
    const json text_body = {{"prompt", tok.decode(prompt)}, {"max_tokens", 20}, {"temperature", 0}};
    EXPECT_EQ(ok_json(s.post("/v1/completions", text_body))["choices"][0]["text"], full.text);
    json sbody = text_body;
    sbody["stream"] = true;
    auto r = s.post("/v1/completions", sbody);
    ASSERT_TRUE(r && r->status == 200);
    std::string streamed;
    size_t at = 0, events = 0;
    bool done = false;
    while ((at = r->body.find("data: ", at)) != std::string::npos) {
      const size_t end = r->body.find("\n\n", at);
      const std::string data = r->body.substr(at + 6, end - at - 6);
      at = end;
      if (data == "[DONE]") {
        done = true;
        break;
      }
      streamed += json::parse(data)["choices"][0]["text"].get<std::string>(), events++;
    }
    EXPECT_TRUE(done);
    EXPECT_GE(events, 1u);  // pieces made faster than they are read travel together
    EXPECT_EQ(streamed, full.text);
  }
}

// ----------------------------------------------------------------------------
// continuous batching

TEST(Serve, ConcurrentRequestsGetTheirOneAtATimeAnswers) {
  const ModelConfig c = test::tiny_lm(true);
  Model<float> m(c, 1, 1);
  m.init_weights(9);
  LetterTokenizer tok(52, kEot);
  TestServer s(m, tok, 3, 64);  // 3 slots for 8 clients: sequences come and go
  const int clients = 8;
  std::vector<std::string> want(clients), got(clients);
  std::vector<json> bodies(clients);
  for (int i = 0; i < clients; i++) {
    const auto prompt = random_ids(3 + 2 * i, 400 + i);
    const int64_t n = 4 + 3 * (i % 4);
    want[size_t(i)] = generate(m, tok, prompt, {.max_new = n, .greedy = true}).text;
    bodies[size_t(i)] = {{"prompt", prompt}, {"max_tokens", n}, {"temperature", 0}};
  }
  std::vector<std::thread> th;
  for (int i = 0; i < clients; i++)
    th.emplace_back([&, i] {
      const auto r = s.post("/v1/completions", bodies[size_t(i)]);
      if (r && r->status == 200) got[size_t(i)] = json::parse(r->body)["choices"][0]["text"];
    });
  for (auto& t : th) t.join();
  for (int i = 0; i < clients; i++) EXPECT_EQ(got[size_t(i)], want[size_t(i)]) << "client " << i;
  // n choices of a sampled request: each its own seed, reproducible
  const json body = {
      {"prompt", "abc"}, {"max_tokens", 8}, {"n", 3}, {"seed", 5}, {"temperature", 1.3}};
  const json a = ok_json(s.post("/v1/completions", body)),
             b = ok_json(s.post("/v1/completions", body));
  ASSERT_EQ(a["choices"].size(), 3u);
  EXPECT_EQ(a["choices"], b["choices"]);
  EXPECT_NE(a["choices"][0]["text"], a["choices"][1]["text"]);
  const json h = s.get("/health");
  EXPECT_EQ(h["running"], 0);
  EXPECT_EQ(h["sequences"], clients + 6);
}

// ----------------------------------------------------------------------------
// refusals

TEST(Serve, BadRequestsGetA400WithAOneLineJsonError) {
  const ModelConfig c = test::tiny_lm(false);
  Model<float> m(c, 1, 1);
  m.init_weights(1);
  LetterTokenizer tok(52, kEot);
  TestServer s(m, tok, 2, 8);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{\"prompt\": \"ab\"", "not valid JSON"},
      {"[1, 2]", "JSON object"},
      {R"({"max_tokens": 3})", "prompt: missing"},
      {R"({"prompt": 5})", "prompt:"},
      {R"({"prompt": []})", "prompt:"},
      {R"({"prompt": [[]]})", "prompt:"},
      {R"({"prompt": [1, 99]})", "outside the vocabulary"},
      {R"({"prompt": [1, -1]})", "outside the vocabulary"},
      {R"({"prompt": "ab", "max_tokens": -1})", "max_tokens"},
      {R"({"prompt": "ab", "max_tokens": "3"})", "max_tokens: must be an integer"},
      {R"({"prompt": "ab", "logprobs": 21})", "logprobs"},
      {R"({"prompt": "ab", "temperature": -1})", "temperature"},
      {R"({"prompt": "ab", "top_p": 0})", "top_p"},
      {R"({"prompt": "ab", "n": 0})", "n:"},
      {R"({"prompt": "ab", "echo": "yes"})", "echo"},
      {R"({"prompt": "ab", "stop": [1]})", "stop"},
      {R"({"prompt": "ab", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": ")" + std::string(65, 'a') + R"("})", "context"},
      // refused before tokenizing: more than 32 bytes per position of the context (64)
      {R"({"prompt": ")" + std::string(64 * 32 + 1, 'a') + R"("})", "2049 bytes"},
      {R"({"prompt": ["ab", ")" + std::string(5000, 'a') + R"("]})", "prompt 1 is a text"},
      // the stated range of seed is int64: 2^63 is not wrapped, nor -2^63 - 1 rounded
      {R"({"prompt": "ab", "seed": 9223372036854775808})", "seed"},
      {R"({"prompt": "ab", "seed": -9223372036854775809})", "seed"},
      {R"({"prompt": "ab", "seed": 1e19})", "seed"},
      {R"({"prompt": "ab", "seed": 1.5})", "seed: must be an integer"},
      // a NUL byte does not end the body; the shape of JSON is bounded before parsing
      {std::string(R"({"prompt": "ab"})") + '\0' + "{}", "NUL"},
      {std::string(100, '[') + std::string(100, ']'), "deeper"},
      {R"({"prompt": [)" +
           [] {
             std::string ids = "1";
             for (int i = 0; i < 30000; i++) ids += ",1";
             return ids;
           }() +
           "]}",
       "values"},
      {R"({"prompt": "ab"} {"prompt": "cd"})", "not valid JSON"},
  };
  for (const auto& [body, needle] : bad) {
    const auto r = s.post_raw("/v1/completions", body);
    ASSERT_TRUE(r) << body;
    EXPECT_EQ(r->status, 400) << body;
    EXPECT_EQ(r->body.find('\n'), std::string::npos) << "one line";
    const json e = json::parse(r->body, nullptr, false);
    ASSERT_FALSE(e.is_discarded()) << r->body;
    EXPECT_NE(e["error"]["message"].get<std::string>().find(needle), std::string::npos)
        << body << " -> " << r->body;
  }
  EXPECT_EQ(s.get("/health")["status"], "ok");  // and it still serves
  EXPECT_EQ(ok_json(s.post("/v1/completions", json{{"prompt", "ab"}, {"max_tokens", 2}}))["choices"]
                .size(),
            1u);
}

TEST(Serve, SeedsAtTheirBoundsAreTakenAndFramingRefusalsSayWhatTheyAre) {
  const ModelConfig c = test::tiny_lm(false);
  Model<float> m(c, 1, 1);
  m.init_weights(1);
  LetterTokenizer tok(52, kEot);
  TestServer s(m, tok, 2, 8);
  for (const char* seed : {"9223372036854775807", "-9223372036854775808", "0", "1e3"})
    EXPECT_EQ(s.post_raw("/v1/completions",
                         std::string(R"({"prompt": "ab", "max_tokens": 2, "seed": )") + seed + "}")
                  ->status,
              200)
        << seed;
  httplib::Client cli("127.0.0.1", s.port);
  auto error_of = [](const httplib::Result& r, int status) {
    EXPECT_TRUE(r);
    if (!r) return std::string();
    EXPECT_EQ(r->status, status) << r->body;
    EXPECT_EQ(r->body.find('\n'), std::string::npos) << "one line";
    const json e = json::parse(r->body, nullptr, false);
    return e.is_discarded() ? std::string() : e["error"]["message"].get<std::string>();
  };
  // a route's other methods: 405 naming the allowed ones
  auto r = cli.Delete("/v1/completions");
  EXPECT_NE(error_of(r, 405).find("not allowed"), std::string::npos);
  EXPECT_EQ(r->get_header_value("Allow"), "POST");
  r = cli.Post("/health", "{}", "application/json");
  EXPECT_NE(error_of(r, 405).find("GET"), std::string::npos);
  EXPECT_NE(error_of(cli.Get("/nothere"), 404).find("no such route"), std::string::npos);
  // compressed bodies are refused by their header, not inflated
  r = cli.Post("/v1/completions", {{"Content-Encoding", "gzip"}}, "xx", "application/json");
  EXPECT_NE(error_of(r, 415).find("Content-Encoding"), std::string::npos);
  // Range is ignored: the whole answer, 200, never several parts
  const json body = {{"prompt", "ab"}, {"max_tokens", 3}, {"temperature", 0}};
  const auto plain = s.post("/v1/completions", body);
  r = cli.Post("/v1/completions", {{"Range", "bytes=0-,0-,0-,0-"}}, body.dump(),
               "application/json");
  ASSERT_TRUE(r && plain);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["choices"], json::parse(plain->body)["choices"]);
  r = cli.Get("/health", {{"Range", "bytes=0-3"}});
  EXPECT_EQ(r->status, 200);
  EXPECT_FALSE(json::parse(r->body, nullptr, false).is_discarded()) << r->body;
  EXPECT_NE(error_of(cli.Get("/health", {{"Range", "bytes=x"}}), 416).find("Range"),
            std::string::npos);
  // the tokenizer's name without the folders it was read from
  EXPECT_EQ(api_tokenizer_name("sentencepiece:/srv/data/tokenizer.model"),
            "sentencepiece:tokenizer.model");
  EXPECT_EQ(api_tokenizer_name("gpt2"), "gpt2");
  EXPECT_EQ(s.get("/health")["running"], 0);
}

// Requests without a seed: each its own, concurrent or one after another (the default seeds
// come from one counter, mixed; texts at temperature 3 over 52 letters never collide by chance).
TEST(Serve, UnseededRequestsEachSampleTheirOwnText) {
  const ModelConfig c = test::tiny_lm(false);
  Model<float> m(c, 1, 1);
  m.init_weights(4);
  LetterTokenizer tok(52, kEot);
  TestServer s(m, tok, 4, 64);
  const json body = {{"prompt", "abc"}, {"max_tokens", 12}, {"temperature", 3}};
  std::vector<std::string> texts(16), ids(16);
  std::vector<std::thread> th;
  for (size_t i = 0; i < 16; i++)
    th.emplace_back([&, i] {
      const json r = ok_json(s.post("/v1/completions", body));
      texts[i] = r["choices"][0]["text"], ids[i] = r["id"];
    });
  for (auto& t : th) t.join();
  EXPECT_EQ(std::set<std::string>(texts.begin(), texts.end()).size(), 16u);
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 16u);
  for (size_t i = 0; i < 16; i++)
    texts[i] = ok_json(s.post("/v1/completions", body))["choices"][0]["text"];
  EXPECT_EQ(std::set<std::string>(texts.begin(), texts.end()).size(), 16u);
}

TEST(Serve, AFullServerAnswers503AndServesAgainAfter) {
  const ModelConfig c = test::tiny_lm(false);
  Model<float> m(c, 1, 1);
  m.init_weights(2);
  LetterTokenizer tok(52, kEot);
  {  // the engine: one slot, no queue; a second sequence while the first runs is refused
    Engine e(m, tok, EngineOptions{.slots = 1, .max_len = 64, .queue = 0});
    SeqSpec a{.prompt = {1}, .gen = {.max_new = 60, .greedy = true}};
    auto first = std::make_shared<Sequence>(a), second = std::make_shared<Sequence>(a);
    ASSERT_TRUE(e.submit({first}));
    EXPECT_FALSE(e.submit({second}));
    SeqOutput out = first->wait(0, 0);
    while (!out.done) out = first->wait(out.tokens.size(), out.text.size());
    EXPECT_TRUE(out.error.empty());
    EXPECT_TRUE(e.submit({second}));  // room again
    e.drain();
    EXPECT_FALSE(e.submit({std::make_shared<Sequence>(a)}));  // draining
  }
  TestServer s(m, tok, 1, 0);
  // two sequences (n = 2) never fit one slot without a queue
  const auto r = s.post("/v1/completions", json{{"prompt", "b"}, {"max_tokens", 2}, {"n", 2}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_NE(json::parse(r->body)["error"]["message"].get<std::string>().find("full"),
            std::string::npos);
  EXPECT_EQ(s.post("/v1/completions", json{{"prompt", "b"}, {"max_tokens", 2}})->status, 200);
}

// A stop that comes before run() (a SIGTERM while the listener thread starts) is not lost: run()
// returns at once, whichever of the two comes first.
TEST(Serve, AStopBeforeRunIsNotLost) {
  const ModelConfig c = test::tiny_lm(false);
  Model<float> m(c, 1, 1);
  m.init_weights(2);
  LetterTokenizer tok(52, kEot);
  for (int i = 0; i < 12; i++) {
    Server srv(m, tok,
               ServeOptions{.host = "127.0.0.1",
                            .port = 0,
                            .engine = {.slots = 1, .queue = 0},
                            .log_requests = false});
    srv.bind();
    std::promise<void> ran;
    auto done = ran.get_future();
    const auto t0 = std::chrono::steady_clock::now();
    if (i == 0) srv.stop(1);  // before run() is even called
    std::thread th([&] {
      srv.run();
      ran.set_value();
    });
    if (i > 0) {
      if (i % 2) std::this_thread::sleep_for(std::chrono::microseconds(100 * i));
      srv.stop(1);
    }
    const bool returned = done.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
    EXPECT_TRUE(returned) << "round " << i << ": run() did not return after stop()";
    if (!returned) srv.stop(0);  // the accept loop runs by now: a second stop ends it
    th.join();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3)) << "round " << i;
  }
}

// ----------------------------------------------------------------------------
// the tokenizer routes (a client that tokenizes remotely)

TEST(Serve, TokenizerRoutesRoundTrip) {
  const ModelConfig c = test::tiny_lm(false);
  Model<float> m(c, 1, 1);
  m.init_weights(1);
  LetterTokenizer tok(52, kEot);
  TestServer s(m, tok, 1, 4);
  const json info = s.get("/tokenizer_info");
  EXPECT_EQ(info["eos_token"], "<eot>");
  const json t = ok_json(s.post("/tokenize", json{{"prompt", "abZ<eot>"}}));
  EXPECT_EQ(t["tokens"], json({0, 1, 51, kEot}));  // the end-of-text name becomes its id
  EXPECT_EQ(ok_json(s.post("/detokenize", json{{"tokens", {0, 1, 51}}}))["prompt"], "abZ");
  EXPECT_EQ(s.post("/detokenize", json{{"tokens", {0, 100}}})->status, 400);
  EXPECT_EQ(s.get("/v1/models")["data"][0]["id"], "tiny");
  EXPECT_EQ(s.get("/v1/models")["data"][0]["max_model_len"], 64);
}

// ----------------------------------------------------------------------------
// OpenAI's fields: refused by name when unknown, penalties and biases as a reference applies them

namespace {

// logits [ids.size()][V] of the training forward of a double copy of the model: row t predicts
// the id after ids[t]
std::vector<std::vector<double>> logits_double(const Model<float>& m,
                                               const std::vector<int32_t>& ids) {
  const int64_t T = int64_t(ids.size()), V = m.cfg.vocab_size;
  Model<double> dm(m.cfg, 1, T);
  std::copy(m.params.begin(), m.params.end(), dm.params.begin());
  std::vector<int32_t> next(ids.begin() + 1, ids.end());
  next.push_back(0);
  dm.forward(ids, next);
  const auto z = dm.logits();
  std::vector<std::vector<double>> rows;
  for (int64_t t = 0; t < T; t++) rows.emplace_back(z.data() + t * V, z.data() + (t + 1) * V);
  return rows;
}

// a LetterTokenizer token's text back to its id
int32_t letter_id(const std::string& t) {
  EXPECT_EQ(t.size(), 1u) << t;
  return t[0] >= 'a' && t[0] <= 'z' ? t[0] - 'a' : 26 + t[0] - 'A';
}

}  // namespace

TEST(Serve, UnknownAndInvalidFieldsGetA400NamingThem) {
  const ModelConfig c = test::tiny_lm(false);
  Model<float> m(c, 1, 1);
  m.init_weights(1);
  LetterTokenizer tok(52, kEot);
  TestServer s(m, tok, 2, 8);
  const std::vector<std::tuple<json, int, std::string>> bad = {
      {{{"repetition_penalty", 1.1}}, 400, "repetition_penalty: unknown field"},
      {{{"do_sample", false}}, 400, "do_sample: unknown field"},
      {{{"min_p", 0.1}}, 400, "min_p: unknown field"},
      {{{"suffix", "x"}}, 400, "suffix: not supported"},
      {{{"stream_options", {{"include_usage", true}}}}, 400, "stream_options: not supported"},
      {{{"presence_penalty", 2.5}}, 400, "presence_penalty: must be in [-2, 2]"},
      {{{"frequency_penalty", "x"}}, 400, "frequency_penalty: must be a number"},
      {{{"logit_bias", {1}}}, 400, "logit_bias: must be an object"},
      {{{"logit_bias", {{"x", 1}}}}, 400, "logit_bias: key 'x' is not a token id"},
      {{{"logit_bias", {{"52", 1}}}}, 400, "token id 52 is outside the vocabulary"},
      {{{"logit_bias", {{"1", 150}}}}, 400, "the bias of token 1 must be a number in [-100, 100]"},
      // two spellings of one id would add two biases to its logit
      {{{"logit_bias", {{"01", 60}, {"1", 60}}}},
       400,
       "logit_bias: key '01' has a leading zero (write token ids as '1')"},
      {{{"best_of", 1}, {"n", 2}}, 400, "best_of: must be at least n (2)"},
      {{{"best_of", 2}, {"stream", true}}, 400, "best_of: cannot be larger than n with stream"},
      {{{"user", 5}}, 400, "user: must be a string"},
      {{{"model", "gpt-3.5-turbo-instruct"}}, 404, "model: 'gpt-3.5-turbo-instruct' is not served"},
  };
  for (auto [body, status, needle] : bad) {
    body["prompt"] = "ab";
    const auto r = s.post("/v1/completions", body);
    ASSERT_TRUE(r) << body;
    EXPECT_EQ(r->status, status) << body;
    const json e = json::parse(r->body, nullptr, false);
    ASSERT_FALSE(e.is_discarded()) << r->body;
    EXPECT_NE(e["error"]["message"].get<std::string>().find(needle), std::string::npos)
        << body << " -> " << r->body;
  }
  // what OpenAI's and the harness's clients send is taken
  const json fine = {{"model", "tiny"},
                     {"prompt", "ab"},
                     {"max_tokens", 2},
                     {"temperature", 0},
                     {"top_k", 5},
                     {"top_p", 0.9},
                     {"seed", 1},
                     {"stop", {"z"}},
                     {"user", "someone"},
                     {"best_of", 2},
                     {"n", 1},
                     {"logit_bias", json::object()},
                     {"presence_penalty", 0},
                     {"frequency_penalty", 0},
                     {"logprobs", 1},
                     {"echo", false},
                     {"stream", false}};
  EXPECT_EQ(ok_json(s.post("/v1/completions", fine))["choices"].size(), 1u);
  // the switch: unknown fields are ignored, OpenAI's unsupported ones still refused
  TestServer lax(m, tok, 2, 8, true);
  const auto r = lax.post("/v1/completions",
                          json{{"prompt", "ab"}, {"max_tokens", 2}, {"repetition_penalty", 1.2}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(lax.post("/v1/completions", json{{"prompt", "ab"}, {"suffix", "x"}})->status, 400);
  // an ignored name is logged as a JSON string: a newline or an escape sequence in it cannot
  // forge a log line or reach the terminal
  testing::internal::CaptureStderr();
  const auto forged =
      lax.post("/v1/completions",
               json{{"prompt", "ab"}, {"max_tokens", 1}, {"x\nserve: forged line\x1b[2J", 1}});
  const std::string log = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(forged);
  EXPECT_EQ(forged->status, 200) << forged->body;
  EXPECT_NE(log.find("ignoring the unknown field \"x\\nserve: forged line\\u001b[2J\""),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("\nserve: forged"), std::string::npos) << log;
  EXPECT_EQ(log.find('\x1b'), std::string::npos) << log;
}

// The request log (--log-requests) writes a path as it came when it is plain, quoted and escaped
// when the library's percent-decoding put a newline or an escape code in it.
TEST(Serve, TheRequestLogEscapesADecodedPath) {
  const ModelConfig c = test::tiny_lm(false);
  Model<float> m(c, 1, 1);
  m.init_weights(1);
  LetterTokenizer tok(52, kEot);
  Server server(m, tok,
                ServeOptions{.host = "127.0.0.1",
                             .port = 0,
                             .engine = {.slots = 1, .queue = 2},
                             .log_requests = true});
  const int port = server.bind();
  std::thread thread([&] { server.run(); });
  httplib::Client cli("127.0.0.1", port);
  cli.set_url_encode(false);  // the path goes as written, %0A and all
  testing::internal::CaptureStderr();
  const auto plain = cli.Get("/v1/models");
  const auto forged = cli.Get("/x%0AGET%20/v1/models%20200%1B[2J");
  server.stop(5);  // the log line is written after the answer: all written once it stopped
  thread.join();
  const std::string log = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(plain && forged);
  EXPECT_EQ(plain->status, 200);
  EXPECT_EQ(forged->status, 404);
  EXPECT_NE(log.find("GET /v1/models 200\n"), std::string::npos) << log;
  EXPECT_NE(log.find("GET \"/x\\nGET /v1/models 200\\u001b[2J\" 404\n"), std::string::npos) << log;
  EXPECT_EQ(log.find('\x1b'), std::string::npos) << log;
}

// /tokenize and /detokenize read what the harness's remote tokenizer and vLLM's clients send and
// refuse any other field by name, as the completions route does.
TEST(Serve, TokenizerRoutesRefuseUnknownFields) {
  const ModelConfig c = test::tiny_lm(false);
  Model<float> m(c, 1, 1);
  m.init_weights(1);
  LetterTokenizer tok(52, kEot);
  TestServer s(m, tok, 2, 8);
  const json harness = {{"prompt", "ab"}, {"add_special_tokens", false}};
  const json ids = ok_json(s.post("/tokenize", harness))["tokens"];
  EXPECT_EQ(ids.size(), 2u);
  const json full = {{"model", "tiny"},
                     {"prompt", "ab"},
                     {"add_special_tokens", true},
                     {"return_token_strs", true}};
  EXPECT_EQ(ok_json(s.post("/tokenize", full))["tokens"], ids);
  EXPECT_EQ(ok_json(s.post("/detokenize", json{{"tokens", ids}, {"model", "tiny"}}))["prompt"],
            "ab");
  const std::vector<std::tuple<std::string, json, int, std::string>> bad = {
      {"/tokenize", {{"prompt", "ab"}, {"truncate", 4}}, 400, "truncate: unknown field"},
      {"/tokenize",
       {{"prompt", "ab"}, {"add_special_tokens", "no"}},
       400,
       "add_special_tokens: must be true or false"},
      {"/tokenize", {{"prompt", "ab"}, {"model", "other"}}, 404, "model: 'other' is not served"},
      {"/detokenize",
       {{"tokens", ids}, {"skip_special_tokens", true}},
       400,
       "skip_special_tokens: unknown field"},
  };
  for (const auto& [route, body, status, needle] : bad) {
    const auto r = s.post(route, body);
    ASSERT_TRUE(r) << body;
    EXPECT_EQ(r->status, status) << route << " " << body << " -> " << r->body;
    EXPECT_NE(r->body.find(needle), std::string::npos) << route << " " << body << " -> " << r->body;
  }
  TestServer lax(m, tok, 2, 8, true);
  EXPECT_EQ(ok_json(lax.post("/tokenize", json{{"prompt", "ab"}, {"truncate", 4}}))["tokens"], ids);
}

// Greedy choices under presence and frequency penalties and logit biases equal the argmax of the
// adjusted logits of a double forward (OpenAI's formula applied here), and the log-probabilities
// returned stay the model's own.
TEST(Serve, PenaltiesAndLogitBiasChooseAsTheReferenceFormula) {
  const ModelConfig c = test::tiny_lm(false);
  Model<float> m(c, 1, 1);
  m.init_weights(3);
  LetterTokenizer tok(52, kEot);
  TestServer s(m, tok, 2, 8);
  const std::vector<int32_t> prompt = random_ids(6, 9);
  const int64_t n_new = 12, Vd = 52;
  auto run = [&](const json& extra) {
    json body = {{"prompt", prompt}, {"max_tokens", n_new}, {"temperature", 0}, {"logprobs", 0}};
    body.update(extra);
    const json r = ok_json(s.post("/v1/completions", body));
    std::vector<int32_t> ids;
    std::vector<double> lps;
    for (const auto& t : r["choices"][0]["logprobs"]["tokens"]) ids.push_back(letter_id(t));
    for (const auto& v : r["choices"][0]["logprobs"]["token_logprobs"]) lps.push_back(v);
    return std::pair(ids, lps);
  };
  const auto [plain, plain_lp] = run(json::object());
  ASSERT_EQ(int64_t(plain.size()), n_new);
  ASSERT_LT(std::set<int32_t>(plain.begin(), plain.end()).size(), plain.size())
      << "the unpenalised text repeats a token (else the penalties could change nothing)";
  struct Case {
    double presence, frequency;
    std::map<int32_t, double> bias;
  };
  const std::vector<Case> cases = {{0, 1.5, {}},
                                   {1.5, 0, {}},
                                   {0.7, 0.9, {}},
                                   {-1, -0.5, {}},
                                   {0, 0, {{plain[0], -100}, {7, 4.5}}},
                                   {0.4, 0.6, {{plain[1], -3}, {30, 2}}}};
  int changed = 0;
  for (const Case& k : cases) {
    json bias = json::object();
    for (const auto& [id, b] : k.bias) bias[std::to_string(id)] = b;
    const auto [got, lps] = run(json{{"presence_penalty", k.presence},
                                     {"frequency_penalty", k.frequency},
                                     {"logit_bias", bias}});
    ASSERT_EQ(int64_t(got.size()), n_new);
    changed += got != plain;
    std::vector<int32_t> seq = prompt;
    std::map<int32_t, int64_t> count;
    for (int64_t t = 0; t < n_new; t++) {
      const std::vector<double> row = logits_double(m, seq).back();
      std::vector<double> adj(row.begin(), row.begin() + Vd);
      for (const auto& [id, b] : k.bias) adj[size_t(id)] += b;
      for (const auto& [id, cnt] : count)
        adj[size_t(id)] -= double(cnt) * k.frequency + (cnt > 0 ? k.presence : 0);
      const int32_t want = int32_t(std::max_element(adj.begin(), adj.end()) - adj.begin());
      EXPECT_EQ(got[size_t(t)], want) << "step " << t;
      // the model's log-probability of the token chosen, whatever the adjustments
      const double mx = *std::max_element(row.begin(), row.end());
      double z = 0;
      for (double v : row) z += std::exp(v - mx);
      EXPECT_NEAR(lps[size_t(t)], row[size_t(got[size_t(t)])] - mx - std::log(z), 1e-4);
      seq.push_back(got[size_t(t)]);
      count[got[size_t(t)]]++;
    }
  }
  EXPECT_GE(changed, 4) << "the adjustments changed the text";
}

// best_of: the candidates are the n = best_of choices of the same seed, and the ones returned are
// those of the highest summed log-probability, best first.
TEST(Serve, BestOfReturnsTheCandidatesOfHighestSummedLogprob) {
  const ModelConfig c = test::tiny_lm(true);
  Model<float> m(c, 1, 1);
  m.init_weights(5);
  LetterTokenizer tok(52, kEot);
  TestServer s(m, tok, 4, 16);
  const json base = {{"prompt", "abcab"}, {"max_tokens", 6}, {"temperature", 1.0}, {"seed", 77}};
  json all = base;
  all["n"] = 5, all["logprobs"] = 0;
  const json every = ok_json(s.post("/v1/completions", all));
  std::vector<std::pair<double, std::string>> cand;  // (summed log-probability, text)
  int64_t tokens = 0;
  for (const auto& ch : every["choices"]) {
    double sum = 0;
    for (const auto& v : ch["logprobs"]["token_logprobs"]) sum += v.get<double>();
    cand.emplace_back(sum, ch["text"]);
    tokens += int64_t(ch["logprobs"]["token_logprobs"].size());
  }
  std::stable_sort(cand.begin(), cand.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  ASSERT_NE(cand[0].second, cand[4].second) << "sampled candidates differ";
  json best = base;
  best["n"] = 2, best["best_of"] = 5;
  const json r = ok_json(s.post("/v1/completions", best));
  ASSERT_EQ(r["choices"].size(), 2u);
  EXPECT_EQ(r["choices"][0]["text"], cand[0].second);
  EXPECT_EQ(r["choices"][1]["text"], cand[1].second);
  EXPECT_EQ(r["choices"][0]["index"], 0);
  EXPECT_EQ(r["choices"][1]["index"], 1);
  EXPECT_TRUE(r["choices"][0]["logprobs"].is_null()) << "not asked for";
  EXPECT_EQ(r["usage"]["completion_tokens"], tokens) << "every candidate's tokens";
}

// best_of ranks a candidate that the end-of-text token ended with that token's log-probability
// counted (choosing to stop is part of the candidate's probability; without it, a candidate would
// get its last choice free). The reference: each candidate's returned log-probabilities plus, if
// it stopped, the end token's log-probability after its tokens from a double forward. Only
// requests where counting the end token changes the best candidate decide.
TEST(Serve, BestOfCountsTheEndTokensLogprob) {
  const ModelConfig c = test::tiny_lm(false);
  Model<float> m(c, 1, 1);
  m.init_weights(7);
  constexpr int32_t kEnd = 52;  // within the tokenizer's ids, so that it can be chosen
  LetterTokenizer tok(53, kEnd);
  TestServer s(m, tok, 4, 32);
  const std::vector<int32_t> prompt = tok.encode("abcab");
  constexpr int64_t kCandidates = 8;
  int decided = 0, stopped = 0;
  for (int64_t seed = 1; seed <= 64 && decided < 2; seed++) {
    // the bias makes stops frequent; the log-probabilities ranked are the model's own
    const json base = {{"prompt", prompt},
                       {"max_tokens", 4},
                       {"temperature", 1.0},
                       {"seed", seed},
                       {"logit_bias", {{std::to_string(kEnd), 3.0}}}};
    json all = base;
    all["n"] = kCandidates, all["logprobs"] = 0;
    const json every = ok_json(s.post("/v1/completions", all));
    ASSERT_EQ(int64_t(every["choices"].size()), kCandidates);
    std::vector<std::tuple<double, double, std::string>> cand;  // (with the end, without, text)
    for (const auto& ch : every["choices"]) {
      double sum = 0;
      std::vector<int32_t> ids = prompt;
      for (const auto& v : ch["logprobs"]["token_logprobs"]) {
        sum += v.get<double>();
      }
      for (const auto& t : ch["logprobs"]["tokens"]) {
        ids.push_back(letter_id(t));
      }
      double end = 0;
      if (ch["finish_reason"] == "stop") {  // no stop strings: the end token
        stopped++;
        const std::vector<double> row = logits_double(m, ids).back();
        const double mx = *std::max_element(row.begin(), row.end());
        double z = 0;
        for (const double v : row) {
          z += std::exp(v - mx);
        }
        end = row[size_t(kEnd)] - mx - std::log(z);
      }
      cand.emplace_back(sum + end, sum, ch["text"]);
    }
    auto best_by = [&](auto key) {
      std::vector<size_t> order(cand.size());
      std::iota(order.begin(), order.end(), size_t(0));
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t a, size_t b) { return key(cand[a]) > key(cand[b]); });
      return order;
    };
    const auto with = best_by([](const auto& t) { return std::get<0>(t); });
    const auto without = best_by([](const auto& t) { return std::get<1>(t); });
    const auto& [top, top_without, top_text] = cand[with[0]];
    // decided: another text is best without the end token, and the best is clear (beyond float
    // rounding) of the second
    if (std::get<2>(cand[without[0]]) == top_text || top - std::get<0>(cand[with[1]]) < 1e-3) {
      continue;
    }
    decided++;
    json best = base;
    best["n"] = 1, best["best_of"] = kCandidates;
    const json r = ok_json(s.post("/v1/completions", best));
    ASSERT_EQ(r["choices"].size(), 1u);
    EXPECT_EQ(r["choices"][0]["text"], top_text) << "seed " << seed;
  }
  EXPECT_GT(stopped, 0) << "some candidates ended with the end token";
  EXPECT_GE(decided, 1) << "a request where counting the end token changes the best candidate";
}
