#pragma once
// moelab serve: an OpenAI-style completions server (cpp-httplib) over the engine's continuous
// batch. Routes: POST /v1/completions, GET /v1/models, POST /tokenize, POST /detokenize,
// GET /tokenizer_info, GET /health. Every refusal is a JSON error on one line: 400 for a bad
// request, 503 when the queue is full or the server is stopping.
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
  int http_threads = 0;  // request threads (0: enough for every slot and queue place, <= 256)
  bool log_requests = true;
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
  // `grace_s` seconds, then they are cancelled), then the listener closes.
  void stop(double grace_s = 30);
  EngineStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moelab
