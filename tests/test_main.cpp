// GoogleTest main of the test binaries: one LibTorch thread, a stack trace on crashes, and the process's
// scratch folders removed at the end. The helpers of tests/test_util.h are in tests/test_util.cpp.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <execinfo.h>

#include <csignal>
#include <filesystem>
#include <string>

#include "common/files.h"


// A crash prints its stack (function names come from -rdynamic) before the process dies.
static void print_stack_and_die(int sig) {
  void* frames[64];
  int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, 2);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

int main(int argc, char** argv) {
  std::signal(SIGSEGV, print_stack_and_die);
  std::signal(SIGABRT, print_stack_and_die);
  ::testing::InitGoogleTest(&argc, argv);
  torch::set_num_threads(1);
  int rc = RUN_ALL_TESTS();
  cw::remove_tree(std::filesystem::temp_directory_path() / ("chunkwise-test-" + std::to_string(::getpid())));
  return rc;
}
