#pragma once
// moelab serve: an OpenAI-style completions server (cpp-httplib) over the engine's continuous
// batch. Routes: POST /v1/completions, GET /v1/models, POST /tokenize, POST /detokenize,
// GET /tokenizer_info, GET /health. Every refusal is a JSON error on one line: 400 for a bad
// request, 503 when the queue is full or the server is stopping, and one status per framing
// problem (404, 405, 408, 411, 413, 414, 415, 416, 431). Each connection is served by its own
// thread with bounded reads (docs/serve.md lists every limit).
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "data/tokenizer.hpp"
#include "model/model.hpp"
#include "serve/engine.hpp"

namespace moelab {

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (tests)
  std::string model_name = "moelab";
  EngineOptions engine;
  int http_threads = 0;        // threads started at once (0: slots + 4); more start on demand
  int max_connections = 512;   // served at once; beyond, a new connection gets a 503 and closes
  int64_t max_body = 8 << 20;  // bytes of a request body; beyond: 413 before it is read
  double read_timeout = 10;    // seconds a request may take to arrive whole (line, headers, body)
  double keep_alive = 5;       // seconds an idle connection waits for its next request
  int keep_alive_max = 100;    // requests per connection
  double write_timeout = 30;   // seconds a response (or one event of a stream) may wait to be sent
  bool log_requests = true;
  // unknown fields of /v1/completions ignored (each name logged once) instead of refused
  bool allow_unknown_fields = false;
};

class Server {
 public:
  Server(const Model<float>& model, const Tokenizer& tok, ServeOptions o);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds; fails with one line when the address cannot be had. Returns the port.
  int bind();
  // Serves until stop(); returns when every request in flight has been answered.
  void run();
  // Graceful: new requests get 503, waiting ones are refused, running ones finish (at most
  // `grace_s` seconds, then they are cancelled), then the listener closes; idle connections
  // close at once, and whatever connection is still open when `grace_s` is over is shut down,
  // so that run() returns within about `grace_s`.
  void stop(double grace_s = 30);
  EngineStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moelab
