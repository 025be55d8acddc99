#pragma once
// Signals are taken by one thread only. A signal delivered to a compute thread runs its frame on
// that thread's stack, and some JIT GEMM kernels (oneDNN's sgemm among them) use the stack
// pointer as a general register, so the frame lands in the heap. signals_init() therefore blocks
// SIGINT, SIGTERM, SIGHUP and SIGUSR1 in the main thread before any other thread exists (every
// later thread inherits the mask) and takes them in a dedicated thread with sigwait: no handler
// ever runs on a compute thread.
//
// Outside a StopScope, SIGINT/SIGTERM/SIGHUP end the process as before (default action) and
// SIGUSR1 is ignored. Inside one, the first SIGINT/SIGTERM/SIGHUP asks for a graceful stop (the
// trainer finishes its step, saves a checkpoint and exits 130), a second one ends the process at
// once with status 130 (checkpoints are written atomically, so the last complete one stays), and
// SIGUSR1 asks for a checkpoint without stopping.
#include <csignal>

namespace moelab {

// Call first thing in main, before any thread is started.
void signals_init();

// While one is alive, stop and save requests are recorded instead of acted on.
class StopScope {
 public:
  StopScope();
  ~StopScope();
  StopScope(const StopScope&) = delete;
  StopScope& operator=(const StopScope&) = delete;
};

int signals_stop_requested();         // the signal that asked to stop, 0 if none
bool signals_take_save_request();     // whether SIGUSR1 came since the last call
const char* signals_stop_activity();  // what the program was doing when the stop signal came

// What the program is doing now ("a training step", "evaluation", "checkpoint writing"), named
// in the interruption message; a static string. The previous one is back when the scope ends.
class Activity {
 public:
  explicit Activity(const char* what);
  ~Activity();
  Activity(const Activity&) = delete;
  Activity& operator=(const Activity&) = delete;

 private:
  const char* previous_;
};

// Child processes inherit the signal mask: system() and popen() run inside one of these so that
// a child (gnuplot, a preset script) can be interrupted like any program.
class SignalsUnblocked {
 public:
  SignalsUnblocked();
  ~SignalsUnblocked();
  SignalsUnblocked(const SignalsUnblocked&) = delete;
  SignalsUnblocked& operator=(const SignalsUnblocked&) = delete;

 private:
  sigset_t saved_;
};

}  // namespace moelab
