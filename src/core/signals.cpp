#include "core/signals.hpp"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <thread>

namespace moelab {

namespace {

std::atomic<int> g_scopes{0};
std::atomic<int> g_stop{0};
std::atomic<bool> g_save{false};
std::atomic<const char*> g_activity{"start-up"}, g_stop_activity{""};

sigset_t handled_set() {
  sigset_t s;
  sigemptyset(&s);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) sigaddset(&s, sig);
  return s;
}

// The default action of `sig`, taken by this thread alone: the process ends as if never handled.
[[noreturn]] void die_by(int sig) {
  std::signal(sig, SIG_DFL);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
  raise(sig);
  _exit(128 + sig);  // not reached for terminating signals
}

void signal_loop(sigset_t set) {
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGUSR1) {
      if (g_scopes > 0) g_save = true;
      continue;
    }
    if (g_scopes == 0) die_by(sig);
    // The activity first: whoever sees the stop reads what it interrupted.
    if (g_stop == 0) g_stop_activity = g_activity.load();
    int none = 0;
    if (!g_stop.compare_exchange_strong(none, sig)) {
      static const char msg[] =
          "\nsecond interrupt: stopping now without saving (the last complete checkpoint is "
          "kept)\n";
      [[maybe_unused]] const ssize_t n = ::write(2, msg, sizeof msg - 1);
      _exit(130);
    }
  }
}

}  // namespace

void signals_init() {
  sigset_t set = handled_set();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread(signal_loop, set).detach();
}

StopScope::StopScope() {
  // Cleared before the scope counts, so that no signal is recorded and then wiped; an inner scope
  // keeps what the outer one has recorded.
  if (g_scopes == 0) {
    g_stop = 0;
    g_save = false;
  }
  g_scopes++;
}
StopScope::~StopScope() {
  g_scopes--;
}

int signals_stop_requested() {
  return g_stop.load();
}

const char* signals_stop_activity() {
  return g_stop_activity.load();
}

Activity::Activity(const char* what) : previous_(g_activity.exchange(what)) {}
Activity::~Activity() {
  g_activity = previous_;
}

bool signals_take_save_request() {
  return g_save.exchange(false);
}

SignalsUnblocked::SignalsUnblocked() {
  sigset_t set = handled_set();
  pthread_sigmask(SIG_UNBLOCK, &set, &saved_);
}
SignalsUnblocked::~SignalsUnblocked() {
  pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
}

}  // namespace moelab
