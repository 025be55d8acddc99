#include "serve/server.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <httplib.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <list>
#include <random>
#include <set>
#include <string_view>
#include <thread>

#include "core/error.hpp"
#include "serve/api.hpp"

namespace moelab {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// The request line and headers together, at most (the library refuses a request line over 8192
// bytes with 414 and a header line over 8192 bytes with 400).
constexpr int64_t kMaxHeaderBytes = 64 << 10;
// After a request or response larger than this, the heap gives its free pages back: what a
// thread allocated for it (parsed JSON, token lists) would otherwise stay with that thread's arena.
constexpr int64_t kTrimAfterBytes = 64 << 10;
// Text bytes tokenized at once by all request threads (TokenizeBudget), about 130 MB of memory
// at the peak with the SentencePiece tokenizer.
constexpr int64_t kTokenizeBudget = 1 << 20;

// Why a request could not be read: its answer's status.
enum class ReadFail { None, Timeout, HeaderTooLarge, BodyTooLarge };

// One client connection, seen by the thread that serves it and by stop().
struct Conn {
  socket_t sock = INVALID_SOCKET;
  ReadFail fail = ReadFail::None;
  bool close_after = false;  // its body was not read, or its framing failed: no next request
  bool trim = false;         // the last request or its answer was large (kTrimAfterBytes)
};

thread_local Conn* t_conn = nullptr;  // the connection this thread serves now
thread_local bool t_refuse = false;   // this thread answers the connections beyond the limit
thread_local bool t_drop = false;     // ... and many of them wait: it closes this one unanswered

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

int ms_until(Clock::time_point t) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now()).count();
  return int(std::clamp<int64_t>(ms, 0, 1 << 30));
}

std::chrono::nanoseconds seconds(double s) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(s));
}

// Whether the client still holds its end open: a hang-up, an error or an end of stream (read
// without taking it) means it went away; bytes waiting (a next request) mean it did not.
bool peer_open(socket_t sock) {
  pollfd p{sock, POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0) return true;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return false;
  char c;
  const ssize_t n = ::recv(sock, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
}

// A client's text (a field's name, a request's path, percent-decoded by the library) as it may
// go into the log: a JSON string in ASCII, so that a newline in it cannot forge a log line nor
// an escape sequence drive the terminal.
std::string log_quoted(const std::string& text) {
  return json(text).dump(-1, ' ', true, json::error_handler_t::replace);
}

// A word of a log line (a method, a path): itself when quoting would change nothing but the
// quotes and it holds no space, else quoted; "-" when empty.
std::string log_word(const std::string& text) {
  if (text.empty()) {
    return "-";
  }
  std::string quoted = log_quoted(text);
  if (quoted.size() == text.size() + 2 && text.find(' ') == std::string::npos) {
    return text;
  }
  return quoted;
}

bool client_gone() {
  return t_conn && !peer_open(t_conn->sock);
}

// Reads and drops what the client sends, until `until` or `max_bytes`: a client still sending
// (a body refused unread) would otherwise have its connection reset by the close before it reads
// the answer.
void drain_input(socket_t sock, Clock::time_point until, int64_t max_bytes) {
  char buf[16384];
  for (int64_t got = 0; got < max_bytes;) {
    pollfd p{sock, POLLIN, 0};
    if (::poll(&p, 1, ms_until(until)) <= 0) break;
    const ssize_t k = ::recv(sock, buf, sizeof buf, MSG_DONTWAIT);
    if (k <= 0) break;
    got += k;
  }
}

void address(const sockaddr_storage& a, std::string& ip, int& port) {
  char host[NI_MAXHOST] = "";
  char serv[NI_MAXSERV] = "";
  const socklen_t len =
      a.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : socklen_t(sizeof(sockaddr_in));
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, host, sizeof host, serv,
                    sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
    ip = host;
    port = std::atoi(serv);
  }
}

// A connection's bytes as cpp-httplib reads and writes them, with the bounds the library lacks:
// a request must arrive whole before its deadline (no per-read timeout that a trickle renews),
// its line and headers within kMaxHeaderBytes, its body (chunk framing included) within the body
// limit; a write waits at most the write timeout.
class ConnStream final : public httplib::Stream {
 public:
  ConnStream(Conn& c, int64_t max_body, double write_timeout)
      : c_(c), max_body_(max_body), write_timeout_(write_timeout) {}

  void begin_request(Clock::time_point deadline) {
    deadline_ = deadline;
    header_ = true;
    crlf_ = 0;
    header_bytes_ = body_bytes_ = 0;
  }
  int64_t request_bytes() const { return header_bytes_ + body_bytes_; }
  bool buffered() const { return off_ < len_; }  // bytes received and not yet read (pipelining)

  bool is_readable() const override { return off_ < len_ || wait(POLLIN, ms_until(deadline_)); }
  bool is_writable() const override {
    return wait(POLLOUT, int(write_timeout_ * 1000)) && peer_open(c_.sock);
  }

  ssize_t read(char* ptr, size_t size) override {
    if (off_ == len_) {
      if (Clock::now() >= deadline_ || !wait(POLLIN, ms_until(deadline_))) {
        c_.fail = ReadFail::Timeout;
        return -1;
      }
      const ssize_t n = ::recv(c_.sock, buf_, sizeof buf_, 0);
      if (n <= 0) return n;
      off_ = 0, len_ = size_t(n);
    }
    size_t n = std::min(size, len_ - off_);
    // what may still be read of this request
    const int64_t room =
        header_ ? kMaxHeaderBytes - header_bytes_ : max_body_ + max_body_ / 8 + 4096 - body_bytes_;
    if (room <= 0) {
      // past the line and headers: an end of input (the library then answers 414 or 400,
      // which the error handler names); past the body: a failed read
      c_.fail = header_ ? ReadFail::HeaderTooLarge : ReadFail::BodyTooLarge;
      return header_ ? 0 : -1;
    }
    n = std::min(n, size_t(room));
    std::memcpy(ptr, buf_ + off_, n);
    off_ += n;
    for (size_t i = 0; i < n; i++) {
      if (!header_) {
        body_bytes_ += int64_t(n - i);
        break;
      }
      header_bytes_++;
      // the blank line that ends the headers: \r\n\r\n
      const char ch = ptr[i];
      crlf_ = (ch == '\r' && (crlf_ == 0 || crlf_ == 2))   ? crlf_ + 1
              : (ch == '\n' && (crlf_ == 1 || crlf_ == 3)) ? crlf_ + 1
              : ch == '\r'                                 ? 1
                                                           : 0;
      if (crlf_ == 4) header_ = false;
    }
    return ssize_t(n);
  }

  // One write per answer: the library writes an answer's status line and headers, then its
  // body, in two writes. The headers are held and go out with the body in one send, so that a
  // client never waits on a lone header segment (with Nagle's algorithm that costs a delayed ACK,
  // 40 ms, on every request of a kept-alive connection). A stream's headers (chunked) and an
  // interim 100 Continue go out at once; flush() sends what is held when no body follows (HEAD).
  ssize_t write(const char* ptr, size_t size) override {
    if (held_.empty() && holds_headers(std::string_view(ptr, size))) {
      held_.assign(ptr, size);
      return ssize_t(size);
    }
    if (!held_.empty()) {
      const bool ok = send_with_held(ptr, size);
      held_.clear();
      return ok ? ssize_t(size) : -1;
    }
    return send_some(ptr, size);
  }
  bool flush() {
    if (held_.empty()) return true;
    const bool ok = send_all(held_);
    held_.clear();
    return ok;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    if (::getpeername(c_.sock, reinterpret_cast<sockaddr*>(&a), &len) == 0) address(a, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    if (::getsockname(c_.sock, reinterpret_cast<sockaddr*>(&a), &len) == 0) address(a, ip, port);
  }
  socket_t socket() const override { return c_.sock; }

 private:
  static bool holds_headers(std::string_view s) {
    return s.starts_with("HTTP/1.1 ") && !s.starts_with("HTTP/1.1 1") &&
           s.find("Transfer-Encoding: chunked") == std::string_view::npos;
  }
  // what the socket takes of ptr within the write timeout (at least one byte), or -1
  ssize_t send_some(const char* ptr, size_t size) {
    const auto until = Clock::now() + seconds(write_timeout_);
    for (;;) {
      const ssize_t n = ::send(c_.sock, ptr, size, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) return n;
      if (errno == EINTR) continue;
      if ((errno != EAGAIN && errno != EWOULDBLOCK) || !wait(POLLOUT, ms_until(until))) return -1;
    }
  }
  bool send_all(const std::string& s) {
    for (size_t at = 0; at < s.size();) {
      const ssize_t n = send_some(s.data() + at, s.size() - at);
      if (n <= 0) return false;
      at += size_t(n);
    }
    return true;
  }
  // The held headers and then size bytes of ptr, sent together (sendmsg with two iovecs: the
  // body is not copied behind the headers); each send waits at most the write timeout.
  bool send_with_held(const char* ptr, size_t size) {
    const size_t head = held_.size(), total = head + size;
    auto until = Clock::now() + seconds(write_timeout_);
    for (size_t at = 0; at < total;) {
      std::array<iovec, 2> iov{};
      size_t parts = 0;
      if (at < head) {
        iov[parts++] = {held_.data() + at, head - at};
      }
      const size_t body_at = at > head ? at - head : 0;
      if (body_at < size) {
        iov[parts++] = {const_cast<char*>(ptr) + body_at, size - body_at};
      }
      msghdr msg{};
      msg.msg_iov = iov.data();
      msg.msg_iovlen = parts;
      const ssize_t n = ::sendmsg(c_.sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        at += size_t(n);
        until = Clock::now() + seconds(write_timeout_);
        continue;
      }
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) || !wait(POLLOUT, ms_until(until))) {
        return false;
      }
    }
    return true;
  }
  bool wait(short events, int ms) const {
    pollfd p{c_.sock, events, 0};
    for (;;) {
      const int r = ::poll(&p, 1, ms);
      if (r >= 0 || errno != EINTR) return r > 0;
    }
  }

  Conn& c_;
  int64_t max_body_;
  double write_timeout_;
  Clock::time_point deadline_ = Clock::now();
  bool header_ = true;
  int crlf_ = 0;
  int64_t header_bytes_ = 0, body_bytes_ = 0;
  char buf_[4096];
  size_t off_ = 0, len_ = 0;
  std::string held_;  // an answer's status line and headers, until its body comes
};

// The connections' threads: one per open connection, started on demand up to the connection
// limit (`ready` of them at once) and kept for the next ones. A connection beyond the limit goes
// to one more thread that answers it 503 at once (t_refuse), or closes it when many wait.
class ConnPool final : public httplib::TaskQueue {
 public:
  ConnPool(size_t ready, size_t max) : max_(std::max<size_t>(max, 1)) {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < std::min(ready, max_); i++) spawn();
    refuser_ = std::thread([this] { refuse_loop(); });
  }
  ~ConnPool() override = default;

  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard lock(mu_);
      if (jobs_.size() < idle_ || threads_.size() < max_) {
        jobs_.push_back(std::move(fn));
        if (jobs_.size() > idle_) spawn();
      } else {
        refused_.push_back(std::move(fn));
      }
    }
    cv_.notify_all();
  }

  void shutdown() override {
    {
      std::lock_guard lock(mu_);
      shutdown_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
    refuser_.join();
  }

 private:
  void spawn() {
    threads_.emplace_back([this] {
      for (;;) {
        std::function<void()> fn;
        {
          std::unique_lock lock(mu_);
          idle_++;
          cv_.wait(lock, [&] { return shutdown_ || !jobs_.empty(); });
          idle_--;
          if (jobs_.empty()) return;  // shutting down
          fn = std::move(jobs_.front());
          jobs_.pop_front();
        }
        fn();
      }
    });
  }

  void refuse_loop() {
    t_refuse = true;
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return shutdown_ || !refused_.empty(); });
        if (refused_.empty()) return;
        fn = std::move(refused_.front());
        refused_.pop_front();
        t_drop = refused_.size() >= kRefusedAnswered;
      }
      fn();
    }
  }

  static constexpr size_t kRefusedAnswered = 64;  // more waiting: closed without an answer
  const size_t max_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_, refused_;
  std::vector<std::thread> threads_;
  std::thread refuser_;
  size_t idle_ = 0;
  bool shutdown_ = false;
};

// cpp-httplib's server with its connection loop replaced (process_and_close_socket is virtual):
// the loop below reads through ConnStream and lets stop() close what is still open.
class HttpServer final : public httplib::Server {
 public:
  std::function<bool(socket_t)> serve_connection;
  using httplib::Server::process_request;

  // Closes the listening socket, whether or not the accept loop has begun: the library's stop()
  // does nothing before listen_after_bind() has set its running flag, so a stop that came first
  // would be lost. The loop checks the socket before each accept and ends once it is closed
  // (before it begins, at once).
  void close_listener() {
    const socket_t sock = svr_sock_.exchange(INVALID_SOCKET);
    if (sock == INVALID_SOCKET) return;
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
  }

 private:
  bool process_and_close_socket(socket_t sock) override { return serve_connection(sock); }
};

struct Route {
  const char* path;
  bool post;
};
constexpr Route kRoutes[] = {{"/v1/completions", true},  {"/v1/models", false},
                             {"/tokenize", true},        {"/detokenize", true},
                             {"/tokenizer_info", false}, {"/health", false}};

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

std::string trimmed_lower(std::string s) {
  const size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  s = a == std::string::npos ? "" : s.substr(a, b - a + 1);
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The connection ends after this answer: its body was not read (or cannot be trusted), so what
// follows on the stream is no request. The Request is the library's own non-const object.
void close_after(const httplib::Request& req) {
  if (t_conn) t_conn->close_after = true;
  auto& h = const_cast<httplib::Request&>(req).headers;
  h.erase("Connection");
  h.emplace("Connection", "close");
}

}  // namespace

struct Server::Impl {
  const Tokenizer& tok;
  ServeOptions o;
  Engine engine;
  ApiContext cx;
  HttpServer http;
  std::atomic<uint64_t> next_id{0};
  uint64_t seed0 = 0;
  std::atomic<bool> stopping{false};
  int port = -1;
  socket_t listen_sock = INVALID_SOCKET;
  int wake_fd = -1;    // readable once the server stops: idle connections close
  std::mutex live_mu;  // the sequences of requests in flight, for a cancel at the end
  std::list<std::weak_ptr<Sequence>> live;
  std::mutex conns_mu;  // the open connections, for the shutdown of the last ones
  std::set<Conn*> conns;
  bool conns_closed = false;  // stop() has shut them down: one dequeued later closes at once
  std::mutex ignored_mu;      // the unknown fields logged (--allow-unknown-fields), each once
  std::set<std::string> ignored;

  Impl(const Model<float>& m, const Tokenizer& t, ServeOptions opt)
      : tok(t),
        o(std::move(opt)),
        engine(m, t, o.engine),
        cx(api_context(t, api_limits(engine.max_len(), t.vocab_size()), o.model_name)) {
    std::random_device rd;
    seed0 = (uint64_t(rd()) << 32) ^ uint64_t(rd());
    wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    cx.budget = std::make_shared<TokenizeBudget>(kTokenizeBudget);
    cx.allow_unknown_fields = o.allow_unknown_fields;
  }
  ~Impl() {
    if (wake_fd >= 0) ::close(wake_fd);
  }

  void routes();
  httplib::Server::HandlerResponse pre_route(const httplib::Request& req, httplib::Response& res);
  void framing_error(const httplib::Request& req, httplib::Response& res);
  bool connection(socket_t sock);
  bool wait_request(socket_t sock, const ConnStream& strm, double seconds_idle, bool fresh);
  void refuse(socket_t sock);
  void completions(const httplib::Request& req, httplib::Response& res);
  void log_ignored(const std::vector<std::string>& names);
  void stream(httplib::Response& res, std::shared_ptr<CompletionRequest> r,
              std::vector<std::shared_ptr<Sequence>> seqs, std::string id, int64_t created);
  void track(const std::vector<std::shared_ptr<Sequence>>& seqs);
  size_t open_connections() {
    std::lock_guard lock(conns_mu);
    return conns.size();
  }
};

// ----------------------------------------------------------------------------
// connections

// Waits for the first byte of a request: false when the client closed or stayed idle for
// `seconds_idle`. Once the server stops, a request already sent (or, on a new connection, sent
// within 200 ms) is still read, to be answered 503; an idle connection closes at once.
bool Server::Impl::wait_request(socket_t sock, const ConnStream& strm, double seconds_idle,
                                bool fresh) {
  if (strm.buffered()) return true;
  pollfd p[2] = {{sock, POLLIN, 0}, {wake_fd, POLLIN, 0}};
  const auto until = Clock::now() + seconds(seconds_idle);
  for (;;) {
    const bool stop = stopping;
    const int r = ::poll(p, stop || wake_fd < 0 ? 1 : 2,
                         stop ? (fresh ? std::min(200, ms_until(until)) : 0) : ms_until(until));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return false;
    if (p[0].revents) {
      char c;
      return ::recv(sock, &c, 1, MSG_PEEK) > 0;
    }
    if (stop || r == 0) return false;
    // the server began to stop while this connection was idle: look once more
  }
}

bool Server::Impl::connection(socket_t sock) {
  if (t_refuse) {
    try {
      refuse(sock);
    } catch (...) {  // its answer could not even be built (out of memory): a close
      ::close(sock);
    }
    return false;
  }
  Conn c;
  c.sock = sock;
  // However this ends, an exception included: the connection leaves the list, the thread
  // forgets it, and its socket closes (under the lock: stop() never shuts down a number the
  // system has given to another socket).
  struct Release {
    Impl& s;
    Conn& c;
    ~Release() {
      t_conn = nullptr;
      std::lock_guard lock(s.conns_mu);
      s.conns.erase(&c);
      ::shutdown(c.sock, SHUT_RDWR);
      ::close(c.sock);
    }
  } release{*this, c};
  // Small answers go out at once: without TCP_NODELAY, a response written in more than one
  // segment waits for the client's delayed ACK (Nagle's algorithm) on a kept-alive connection.
  const int one = 1;
  ::setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ConnStream strm(c, o.max_body, o.write_timeout);
  bool ret = false;
  try {
    {
      std::lock_guard lock(conns_mu);
      // a connection that waited in the queue past the end of the stop's grace
      if (conns_closed) return false;
      conns.insert(&c);
    }
    t_conn = &c;
    for (int n = 0; n < o.keep_alive_max; n++) {
      if (!wait_request(sock, strm, n == 0 ? o.read_timeout : o.keep_alive, n == 0)) break;
      strm.begin_request(Clock::now() + seconds(o.read_timeout));
      c.fail = ReadFail::None;
      c.close_after = false;
      bool closed = false;
      ret = http.process_request(strm, n + 1 == o.keep_alive_max || stopping, closed,
                                 [](httplib::Request& req) { req.ranges.clear(); });
      if (!strm.flush()) ret = false;
      if (c.trim || strm.request_bytes() > kTrimAfterBytes) ::malloc_trim(0);
      c.trim = false;
      if (!ret || closed || c.close_after || stopping) break;
    }
  } catch (const std::exception& e) {
    // a request or its answer failed past the handlers (an allocation while writing): this
    // connection closes, the server goes on
    std::fprintf(stderr, "serve: a connection failed (%s); closed\n", e.what());
    return false;
  } catch (...) {
    std::fprintf(stderr, "serve: a connection failed; closed\n");
    return false;
  }
  if (c.close_after && ret) {
    // The client may still be sending the body that was refused unread: read (and drop) what
    // comes for a moment, so that closing does not reset the connection before it reads the
    // answer.
    ::shutdown(sock, SHUT_WR);
    drain_input(sock, Clock::now() + std::chrono::milliseconds(200), int64_t(4) << 20);
  }
  return ret;
}

// A connection beyond --max-connections: a 503 at once (or, when many such wait, a close).
void Server::Impl::refuse(socket_t sock) {
  if (t_drop) {
    ::close(sock);
    return;
  }
  const std::string body = api_error_body(
      503,
      fmt::format("too many connections (--max-connections {}); retry later", o.max_connections));
  const std::string msg = fmt::format(
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: "
      "{}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{}",
      body.size(), body);
  const auto until = Clock::now() + std::chrono::milliseconds(100);
  {  // what the client sent first, so that the close does not reset the connection
    char buf[16384];
    pollfd p{sock, POLLIN, 0};
    if (::poll(&p, 1, 50) > 0) {
      [[maybe_unused]] const ssize_t k = ::recv(sock, buf, sizeof buf, MSG_DONTWAIT);
    }
  }
  [[maybe_unused]] const ssize_t sent =
      ::send(sock, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  ::shutdown(sock, SHUT_WR);
  drain_input(sock, until, int64_t(1) << 20);
  ::close(sock);
  if (o.log_requests) std::fprintf(stderr, "- - 503 (too many connections)\n");
}

// Refusals decided from the request line and headers alone, before the body is read: an
// unknown route (404), a method the route does not take (405), any route but /health once the
// server stops (503), a body the server will not read
// (411, 413, 415, 400 for a Transfer-Encoding other than chunked or an unreadable length).
httplib::Server::HandlerResponse Server::Impl::pre_route(const httplib::Request& req,
                                                         httplib::Response& res) {
  using R = httplib::Server::HandlerResponse;
  const bool has_body = (req.has_header("Content-Length") &&
                         trimmed_lower(req.get_header_value("Content-Length")) != "0") ||
                        req.has_header("Transfer-Encoding");
  auto refuse = [&](int status, const std::string& message) {
    reply_error(res, status, message);
    if (has_body) close_after(req);
    return R::Handled;
  };
  const Route* route = nullptr;
  for (const Route& r : kRoutes)
    if (req.path == r.path) route = &r;
  if (!route) return refuse(404, fmt::format("{} {}: no such route", req.method, req.path));
  const bool ok = route->post ? req.method == "POST" : req.method == "GET" || req.method == "HEAD";
  if (!ok) {
    res.set_header("Allow", route->post ? "POST" : "GET, HEAD");
    return refuse(405, fmt::format("{} {}: method not allowed (allowed: {})", req.method, req.path,
                                   route->post ? "POST" : "GET, HEAD"));
  }
  // once the server stops, only /health is answered (it says "stopping"); a body is not read
  if (stopping && std::strcmp(route->path, "/health") != 0)
    return refuse(503, "the server is shutting down");
  if (!route->post) {
    if (has_body) close_after(req);  // the library does not read a GET's body
    return R::Unhandled;
  }
  for (size_t i = 0; i < req.get_header_value_count("Content-Encoding"); i++) {
    const std::string e = trimmed_lower(req.get_header_value("Content-Encoding", i));
    if (!e.empty() && e != "identity")
      return refuse(415, fmt::format("Content-Encoding {}: request bodies are taken uncompressed "
                                     "only (identity)",
                                     req.get_header_value("Content-Encoding", i)));
  }
  if (req.has_header("Transfer-Encoding")) {
    if (req.get_header_value_count("Transfer-Encoding") != 1 ||
        trimmed_lower(req.get_header_value("Transfer-Encoding")) != "chunked")
      return refuse(400, "Transfer-Encoding: only chunked is supported");
    if (req.has_header("Content-Length"))
      return refuse(400, "Content-Length and Transfer-Encoding together");
    return R::Unhandled;  // the body's size is bounded as it is read
  }
  if (!req.has_header("Content-Length"))
    return refuse(411, "a Content-Length (or a chunked body) is required");
  uint64_t len = 0;
  for (size_t i = 0; i < req.get_header_value_count("Content-Length"); i++) {
    const std::string v = trimmed_lower(req.get_header_value("Content-Length", i));
    if (v.empty() || v.size() > 19 || v.find_first_not_of("0123456789") != std::string::npos)
      return refuse(400, fmt::format("Content-Length: not a byte count ({})",
                                     req.get_header_value("Content-Length", i)));
    if (i > 0 && std::stoull(v) != len)
      return refuse(400, "Content-Length: several headers that differ");
    len = std::stoull(v);
  }
  if (len > uint64_t(o.max_body))
    return refuse(413, fmt::format("the body is {} bytes, more than the limit ({} bytes, "
                                   "--max-body)",
                                   len, o.max_body));
  return R::Unhandled;
}

// The library's own refusals (a request it could not read or parse) arrive here with an empty
// body: each gets its status's own JSON message, and the connection ends after it.
void Server::Impl::framing_error(const httplib::Request& req, httplib::Response& res) {
  auto& r = const_cast<httplib::Request&>(req);
  r.ranges.clear();  // an error's body is whole (a Range header that failed to parse leaves some)
  if (!res.body.empty()) return;  // a handler's own answer
  close_after(req);
  const ReadFail fail = t_conn ? t_conn->fail : ReadFail::None;
  std::string m;
  if (fail == ReadFail::Timeout) {
    res.status = 408;
    m = fmt::format("the request did not arrive whole within {} s (--read-timeout)",
                    o.read_timeout);
  } else if (fail == ReadFail::HeaderTooLarge && res.status != 414) {
    res.status = 431;
    m = fmt::format("the request line and headers exceed {} bytes", kMaxHeaderBytes);
  } else if (fail == ReadFail::BodyTooLarge || res.status == 413) {
    res.status = 413;
    m = fmt::format("the body is more than the limit ({} bytes, --max-body)", o.max_body);
  } else {
    switch (res.status) {
      case 400:
        m = "malformed request: its request line, a header or the body's framing";
        break;
      case 404:
        m = fmt::format("{} {}: no such route", req.method, req.path);
        break;
      case 414:
        m = "the request line is longer than 8192 bytes";
        break;
      case 415:
        m = "request bodies are taken uncompressed only (identity)";
        break;
      case 416:
        m = "the Range header cannot be parsed (this server ignores ranges)";
        break;
      case 500:
        m = "internal error";
        break;
      default:
        m = fmt::format("HTTP {}", res.status);
    }
  }
  res.set_content(api_error_body(res.status, m), "application/json");
}

// ----------------------------------------------------------------------------
// /v1/completions

void Server::Impl::track(const std::vector<std::shared_ptr<Sequence>>& seqs) {
  std::lock_guard lock(live_mu);
  live.remove_if([](const auto& w) { return w.expired(); });
  for (const auto& s : seqs) live.push_back(s);
}

// Each unknown field's name once on stderr, the first 64 names at most (a client cannot fill
// the log or the memory with names of its own). A name is the client's text: it is written as a
// JSON string in ASCII (a newline or an escape sequence in it cannot forge a log line or drive
// the terminal), cut to 64 bytes at a character boundary.
void Server::Impl::log_ignored(const std::vector<std::string>& names) {
  constexpr size_t kMaxNames = 64;
  std::lock_guard lock(ignored_mu);
  for (const auto& name : names) {
    size_t cut = std::min<size_t>(name.size(), 64);
    while (cut > 0 && cut < name.size() && (static_cast<unsigned char>(name[cut]) & 0xC0) == 0x80) {
      cut--;  // not inside a UTF-8 sequence
    }
    const std::string key = name.substr(0, cut);
    if (ignored.size() >= kMaxNames || !ignored.insert(key).second) {
      continue;
    }
    const std::string shown = log_quoted(key);
    std::fprintf(stderr, "serve: ignoring the unknown field %s%s (--allow-unknown-fields)%s\n",
                 shown.c_str(), cut < name.size() ? " (cut)" : "",
                 ignored.size() == kMaxNames ? "; further unknown names are not logged" : "");
  }
}

void Server::Impl::completions(const httplib::Request& req, httplib::Response& res) {
  // one number per request: its id, and (mixed) its default seed
  const uint64_t number = next_id.fetch_add(1, std::memory_order_relaxed);
  auto r = std::make_shared<CompletionRequest>(
      api_parse_completion(req.body, cx, splitmix64(seed0 + number)));
  log_ignored(r->ignored);
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
  const std::string id = fmt::format("cmpl-{}", number);
  const int64_t created = unix_now();
  if (r->stream) return stream(res, r, std::move(seqs), id, created);
  std::vector<SeqOutput> outs;
  for (auto& s : seqs) {
    // a client that goes away cancels its sequences: their slots are free for others
    while (!s->wait_done(std::chrono::milliseconds(100)))
      if (client_gone()) {
        for (auto& other : seqs) other->cancel();
        return reply_error(res, 499, "the client closed the connection");
      }
    SeqOutput out = s->take();
    if (!out.error.empty()) {
      for (auto& other : seqs) other->cancel();
      return reply_error(res, 503, out.error);
    }
    outs.push_back(std::move(out));
  }
  res.status = 200;
  res.set_content(api_completion_response(*r, outs, cx, id, created), "application/json");
}

// Server-sent events: the choices one after another (they run together in the engine), each as
// its text comes, then "data: [DONE]". A client that goes away cancels its sequences.
void Server::Impl::stream(httplib::Response& res, std::shared_ptr<CompletionRequest> r,
                          std::vector<std::shared_ptr<Sequence>> seqs, std::string id,
                          int64_t created) {
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream", [this, r, seqs, id, created](size_t, httplib::DataSink& sink) {
        auto send = [&](const std::string& j) {
          const std::string ev = "data: " + j + "\n\n";
          return sink.write(ev.data(), ev.size());
        };
        bool ok = true;
        for (size_t i = 0; i < seqs.size() && ok; i++) {
          const size_t p = i / size_t(r->n);
          SeqOutput out = seqs[i]->wait(0, 0, std::chrono::milliseconds(100));
          while (!out.done && out.tokens.empty() && out.text.empty() && ok) {
            ok = !client_gone();
            out = seqs[i]->wait(0, 0, std::chrono::milliseconds(100));
          }
          if (ok && r->seq.echo)
            ok = send(api_stream_chunk(*r, int64_t(i), out, true, 0, out.prompt.size(),
                                       r->prompt_texts[p], false, cx, id, created));
          size_t tokens = 0, text = 0;
          while (ok) {
            const bool last = out.done;
            if (!out.error.empty()) {
              ok = send(api_error_body(503, out.error));
              break;
            }
            if (out.tokens.size() > tokens || out.text.size() > text || last)
              ok = send(api_stream_chunk(*r, int64_t(i), out, false, tokens, out.tokens.size(),
                                         out.text.substr(text), last, cx, id, created));
            tokens = out.tokens.size(), text = out.text.size();
            if (last) break;
            out = seqs[i]->wait(tokens, text, std::chrono::milliseconds(100));
            if (!out.done && out.tokens.size() == tokens && out.text.size() == text)
              ok = !client_gone();
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
  auto guarded = [](auto handler) {
    return [handler](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const ApiError& e) {
        reply_error(res, e.status, e.what());
      } catch (const std::exception& e) {
        reply_error(res, 500, e.what());
      }
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
              const json j = api_parse_body(req.body, cx.lim);
              static constexpr std::array<std::string_view, 4> kFields = {
                  "model", "prompt", "add_special_tokens", "return_token_strs"};
              log_ignored(api_check_tool_fields(j, cx, kFields));
              const auto p = j.find("prompt");
              if (p == j.end() || !p->is_string()) throw ApiError(400, "prompt: must be a text");
              const std::string& text = p->template get_ref<const std::string&>();
              if (int64_t(text.size()) > cx.lim.max_tokenize_bytes)
                throw ApiError(400, fmt::format("prompt: a text of {} bytes, more than /tokenize "
                                                "takes ({} bytes)",
                                                text.size(), cx.lim.max_tokenize_bytes));
              // the budget is held until the answer (a list as long as the text) is built
              const auto hold = cx.budget->take(int64_t(text.size()));
              const auto ids = api_encode(tok, text);
              json strs = json::array();
              for (int32_t t : ids) strs.push_back(cx.texts[size_t(t)]);
              reply(res, json{{"tokens", ids},
                              {"count", ids.size()},
                              {"max_model_len", engine.max_len()},
                              {"token_strs", strs}});
            }));
  http.Post("/detokenize", guarded([this](const auto& req, auto& res) {
              const json j = api_parse_body(req.body, cx.lim);
              static constexpr std::array<std::string_view, 2> kFields = {"model", "tokens"};
              log_ignored(api_check_tool_fields(j, cx, kFields));
              const auto t = j.find("tokens");
              if (t == j.end()) throw ApiError(400, "tokens: missing");
              const auto ids = api_token_ids(*t, tok.vocab_size(), "tokens");
              reply(res, json{{"prompt", tokenizer_decode_text(tok, ids)}});
            }));
  http.Get("/tokenizer_info", guarded([this](const auto&, auto& res) {
             reply(res, json{{"eos_token", tok.eot_text()},
                             {"eos_token_id", tok.eot_id()},
                             {"bos_token", nullptr},
                             {"pad_token", nullptr},
                             {"chat_template", nullptr},
                             {"tokenizer_class", api_tokenizer_name(tok.name())},
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
                             {"steps", s.steps},
                             {"prefill_chunk", s.prefill_chunk},
                             {"prefill_passes", s.prefill_passes},
                             {"connections", open_connections()}});
           }));
  // ranges are never served (the library would answer several of them as a multipart body)
  http.set_default_headers({{"Accept-Ranges", "none"}});
  http.set_pre_routing_handler(
      [this](const httplib::Request& req, httplib::Response& res) { return pre_route(req, res); });
  // Expect: 100-continue gets the same refusals before the client sends its body
  http.set_expect_100_continue_handler([this](const httplib::Request& req, httplib::Response& res) {
    return pre_route(req, res) == httplib::Server::HandlerResponse::Handled ? res.status : 100;
  });
  http.set_error_handler(
      [this](const httplib::Request& req, httplib::Response& res) { framing_error(req, res); });
  // the log line is written when the answer has gone out, with the status it went out with
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    if (t_conn && int64_t(res.body.size()) > kTrimAfterBytes) t_conn->trim = true;
    if (o.log_requests) {
      // the path is percent-decoded: a %0A in it would otherwise end the line
      std::fprintf(stderr, "%s %s %d\n", log_word(req.method).c_str(), log_word(req.path).c_str(),
                   res.status);
    }
  });
}

// ----------------------------------------------------------------------------
// life cycle

Server::Server(const Model<float>& model, const Tokenizer& tok, ServeOptions o)
    : impl_(std::make_unique<Impl>(model, tok, std::move(o))) {
  Impl& s = *impl_;
  check(s.o.max_connections >= 1, "serve: --max-connections must be >= 1");
  check(s.o.max_body >= 1, "serve: --max-body must be >= 1");
  check(s.o.read_timeout > 0 && s.o.keep_alive > 0 && s.o.write_timeout > 0,
        "serve: timeouts must be > 0");
  check(s.o.keep_alive_max >= 1, "serve: keep-alive max must be >= 1");
  const size_t ready = size_t(s.o.http_threads > 0 ? s.o.http_threads : s.o.engine.slots + 4);
  const size_t max = size_t(s.o.max_connections);
  // cpp-httplib owns the task queue it is given (its interface takes a raw pointer)
  s.http.new_task_queue = [ready, max] { return new ConnPool(ready, max); };
  s.http.serve_connection = [&s](socket_t sock) { return s.connection(sock); };
  // SO_REUSEADDR only: the library's default adds SO_REUSEPORT, with which a second server
  // would share the port silently instead of being refused
  s.http.set_socket_options([&s](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    s.listen_sock = sock;
  });
  s.http.set_payload_max_length(size_t(s.o.max_body));
  const auto whole = [](double x) { return std::max<time_t>(1, time_t(std::ceil(x))); };
  // the library reads these for its own headers (Keep-Alive: timeout, max) and socket options
  s.http.set_read_timeout(whole(s.o.read_timeout), 0);
  s.http.set_write_timeout(whole(s.o.write_timeout), 0);
  s.http.set_keep_alive_timeout(whole(s.o.keep_alive));
  s.http.set_keep_alive_max_count(size_t(s.o.keep_alive_max));
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
  // The library listens with a backlog of 5, which drops connections under a burst; Linux takes
  // a second listen() on the socket as a new backlog (capped by net.core.somaxconn).
  if (s.listen_sock != INVALID_SOCKET &&
      ::listen(s.listen_sock, std::max(s.o.max_connections, 128)) != 0)
    fail(fmt::format("serve: listen backlog: {}", std::strerror(errno)));
  return s.port;
}

void Server::run() {
  if (impl_->stopping) return;  // stopped before it ran (the listener is closed as well)
  impl_->http.listen_after_bind();
}

void Server::stop(double grace_s) {
  Impl& s = *impl_;
  const auto until = Clock::now() + seconds(grace_s);
  s.stopping = true;
  if (s.wake_fd >= 0) {
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(s.wake_fd, &one, sizeof one);
  }
  s.engine.drain();
  while (!s.engine.idle() && Clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  {
    std::lock_guard lock(s.live_mu);
    for (auto& w : s.live)
      if (auto q = w.lock()) q->cancel();
  }
  while (!s.engine.idle()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  s.http.close_listener();
  // the answers go out; a connection still open when the grace is over (a client that sends or
  // reads nothing) is shut down, which ends its thread's wait
  while (s.open_connections() > 0 && Clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::lock_guard lock(s.conns_mu);
  s.conns_closed = true;
  for (Conn* c : s.conns) ::shutdown(c->sock, SHUT_RDWR);
}

EngineStats Server::stats() const {
  return impl_->engine.stats();
}

}  // namespace moelab
