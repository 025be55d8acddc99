#include "serve/server.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <chrono>
#include <cstdio>
#include <list>
#include <random>

#include "core/error.hpp"
#include "serve/api.hpp"

namespace moelab {

using json = nlohmann::json;

struct Server::Impl {
  const Tokenizer& tok;
  ServeOptions o;
  Engine engine;
  ApiContext cx;
  httplib::Server http;
  std::atomic<uint64_t> next_id{0};
  uint64_t seed0 = 0;
  std::atomic<bool> stopping{false};
  int port = -1;
  std::mutex live_mu;  // the sequences of requests in flight, for a cancel at the end
  std::list<std::weak_ptr<Sequence>> live;

  Impl(const Model<float>& m, const Tokenizer& t, ServeOptions opt)
      : tok(t),
        o(std::move(opt)),
        engine(m, t, o.engine),
        cx(api_context(t, ApiLimits{engine.max_len(), t.vocab_size()}, o.model_name)),
        seed0(std::random_device{}()) {}

  void routes();
  void completions(const httplib::Request& req, httplib::Response& res);
  void stream(httplib::Response& res, std::shared_ptr<CompletionRequest> r,
              std::vector<std::shared_ptr<Sequence>> seqs, std::string id, int64_t created);
  void track(const std::vector<std::shared_ptr<Sequence>>& seqs);
};

namespace {

void reply_error(httplib::Response& res, int status, const std::string& message) {
  res.status = status;
  res.set_content(api_error_body(status, message), "application/json");
}

void reply(httplib::Response& res, const json& j) {
  res.status = 200;
  res.set_content(api_dump(j), "application/json");
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The body as a JSON object, or a 400.
json body_object(const httplib::Request& req) {
  json j = json::parse(req.body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw ApiError(400, "the body must be a JSON object");
  return j;
}

}  // namespace

// ----------------------------------------------------------------------------
// /v1/completions

void Server::Impl::track(const std::vector<std::shared_ptr<Sequence>>& seqs) {
  std::lock_guard lock(live_mu);
  live.remove_if([](const auto& w) { return w.expired(); });
  for (const auto& s : seqs) live.push_back(s);
}

void Server::Impl::completions(const httplib::Request& req, httplib::Response& res) {
  auto r = std::make_shared<CompletionRequest>(
      api_parse_completion(req.body, cx, seed0 + next_id.load()));
  auto seqs = api_sequences(*r);
  if (stopping || !engine.submit(seqs)) {
    const EngineStats st = engine.stats();
    reply_error(res, 503,
                stopping ? "the server is shutting down"
                         : fmt::format("the server is full ({} sequences running, {} waiting, "
                                       "room for {}); retry later",
                                       st.running, st.waiting, st.slots + st.queue));
    return;
  }
  track(seqs);
  const std::string id = fmt::format("cmpl-{}", next_id++);
  const int64_t created = unix_now();
  if (r->stream) return stream(res, r, std::move(seqs), id, created);
  std::vector<SeqOutput> outs;
  for (auto& s : seqs) {
    SeqOutput out = s->wait(0, 0);
    while (!out.done) out = s->wait(out.tokens.size(), out.text.size());
    if (!out.error.empty()) {
      for (auto& other : seqs) other->cancel();
      return reply_error(res, 503, out.error);
    }
    outs.push_back(std::move(out));
  }
  reply(res, api_completion_response(*r, outs, cx, id, created));
}

// Server-sent events: the choices one after another (they run together in the engine), each as
// its text comes, then "data: [DONE]". A client that goes away cancels its sequences.
void Server::Impl::stream(httplib::Response& res, std::shared_ptr<CompletionRequest> r,
                          std::vector<std::shared_ptr<Sequence>> seqs, std::string id,
                          int64_t created) {
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream", [this, r, seqs, id, created](size_t, httplib::DataSink& sink) {
        auto send = [&](const json& j) {
          const std::string ev = "data: " + api_dump(j) + "\n\n";
          return sink.write(ev.data(), ev.size());
        };
        bool ok = true;
        for (size_t i = 0; i < seqs.size() && ok; i++) {
          const size_t p = i / size_t(r->n);
          SeqOutput out = seqs[i]->wait(0, 0);
          if (r->seq.echo)
            ok = send(api_stream_chunk(*r, int64_t(i), out, true, 0, out.prompt.size(),
                                       r->prompt_texts[p], false, cx, id, created));
          size_t tokens = 0, text = 0;
          while (ok) {
            const bool last = out.done;
            if (!out.error.empty()) {
              ok = send(json::parse(api_error_body(503, out.error)));
              break;
            }
            if (out.tokens.size() > tokens || out.text.size() > text || last)
              ok = send(api_stream_chunk(*r, int64_t(i), out, false, tokens, out.tokens.size(),
                                         out.text.substr(text), last, cx, id, created));
            tokens = out.tokens.size(), text = out.text.size();
            if (last) break;
            out = seqs[i]->wait(tokens, text);
          }
        }
        if (!ok) {
          for (auto& s : seqs) s->cancel();
          return false;
        }
        const std::string done = "data: [DONE]\n\n";
        sink.write(done.data(), done.size());
        sink.done();
        return true;
      });
}

// ----------------------------------------------------------------------------
// the other routes

void Server::Impl::routes() {
  auto guarded = [this](auto handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const ApiError& e) {
        reply_error(res, e.status, e.what());
      } catch (const std::exception& e) {
        reply_error(res, 500, e.what());
      }
      if (o.log_requests)
        std::fprintf(stderr, "%s %s %d\n", req.method.c_str(), req.path.c_str(), res.status);
    };
  };
  http.Post("/v1/completions",
            guarded([this](const auto& req, auto& res) { completions(req, res); }));
  http.Get("/v1/models", guarded([this](const auto&, auto& res) {
             reply(res, json{{"object", "list"},
                             {"data",
                              {{{"id", cx.model},
                                {"object", "model"},
                                {"created", 0},
                                {"owned_by", "moelab"},
                                {"max_model_len", engine.max_len()}}}}});
           }));
  http.Post("/tokenize", guarded([this](const auto& req, auto& res) {
              const json j = body_object(req);
              const auto p = j.find("prompt");
              if (p == j.end() || !p->is_string()) throw ApiError(400, "prompt: must be a text");
              const auto ids = api_encode(tok, p->template get<std::string>());
              json strs = json::array();
              for (int32_t t : ids) strs.push_back(cx.texts[size_t(t)]);
              reply(res, json{{"tokens", ids},
                              {"count", ids.size()},
                              {"max_model_len", engine.max_len()},
                              {"token_strs", strs}});
            }));
  http.Post(
      "/detokenize", guarded([this](const auto& req, auto& res) {
        const json j = body_object(req);
        const auto t = j.find("tokens");
        if (t == j.end()) throw ApiError(400, "tokens: missing");
        reply(res, json{{"prompt", tok.decode(api_token_ids(*t, tok.vocab_size(), "tokens"))}});
      }));
  http.Get("/tokenizer_info", guarded([this](const auto&, auto& res) {
             reply(res, json{{"eos_token", tok.eot_text()},
                             {"eos_token_id", tok.eot_id()},
                             {"bos_token", nullptr},
                             {"pad_token", nullptr},
                             {"chat_template", nullptr},
                             {"tokenizer_class", tok.name()},
                             {"vocab_size", tok.vocab_size()},
                             {"model_max_length", engine.max_len()},
                             {"max_model_len", engine.max_len()}});
           }));
  http.Get("/health", guarded([this](const auto&, auto& res) {
             const EngineStats s = engine.stats();
             reply(res, json{{"status", stopping ? "stopping" : "ok"},
                             {"running", s.running},
                             {"waiting", s.waiting},
                             {"slots", s.slots},
                             {"queue", s.queue},
                             {"max_len", s.max_len},
                             {"sequences", s.sequences},
                             {"prompt_tokens", s.prompt_tokens},
                             {"new_tokens", s.new_tokens},
                             {"steps", s.steps}});
           }));
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.body.empty())
      res.set_content(
          api_error_body(res.status, fmt::format("{} {}: no such route", req.method, req.path)),
          "application/json");
  });
}

// ----------------------------------------------------------------------------
// life cycle

Server::Server(const Model<float>& model, const Tokenizer& tok, ServeOptions o)
    : impl_(std::make_unique<Impl>(model, tok, std::move(o))) {
  Impl& s = *impl_;
  const int threads =
      s.o.http_threads > 0
          ? s.o.http_threads
          : int(std::clamp<int64_t>(s.o.engine.slots + s.o.engine.queue + 4, 8, 256));
  // cpp-httplib owns the task queue it is given (its interface takes a raw pointer)
  s.http.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  // SO_REUSEADDR only: the library's default adds SO_REUSEPORT, with which a second server
  // would share the port silently instead of being refused
  s.http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  s.http.set_payload_max_length(size_t(64) << 20);
  s.http.set_read_timeout(600, 0);
  s.http.set_write_timeout(600, 0);
  s.routes();
}

Server::~Server() = default;

int Server::bind() {
  Impl& s = *impl_;
  s.port = s.o.port == 0 ? s.http.bind_to_any_port(s.o.host)
                         : (s.http.bind_to_port(s.o.host, s.o.port) ? s.o.port : -1);
  if (s.port < 0)
    fail(fmt::format("serve: cannot listen on {}:{} (in use, or not an address of this machine)",
                     s.o.host, s.o.port));
  return s.port;
}

void Server::run() {
  impl_->http.listen_after_bind();
}

void Server::stop(double grace_s) {
  Impl& s = *impl_;
  s.stopping = true;
  s.engine.drain();
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace_s);
  while (!s.engine.idle() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  {
    std::lock_guard lock(s.live_mu);
    for (auto& w : s.live)
      if (auto q = w.lock()) q->cancel();
  }
  while (!s.engine.idle()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  s.http.stop();
}

EngineStats Server::stats() const {
  return impl_->engine.stats();
}

}  // namespace moelab
