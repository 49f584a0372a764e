// `chunkwise train RECIPE [--resume] [--section.key=value ...]` (SIGTERM / SIGUSR1: checkpoint and stop) and
// `chunkwise recipe keys`.
#include <signal.h>

#include <csignal>
#include <iostream>

#include "train/recipe.h"
#include "train/schedule.h"
#include "train/collectives.h"
#include "train/trainer.h"
#include "tools/cli/commands.h"
#include "tools/cli/options.h"

namespace cw::cli {

namespace {
// SIGTERM (what torchrun, SLURM and Kubernetes send before stopping a job) and SIGUSR1 (SLURM's
// `--signal=USR1@SECONDS` warning) ask the run to finish its step and write a checkpoint. The handler resets
// itself, so a second signal kills at once; SIGINT (Ctrl-C) keeps its default.
volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}
}  // namespace

int train_main(const Args& args) {
  po::options_description desc("train options");
  std::string recipe_file;
  int64_t stop_at = 0;
  desc.add_options()("recipe", po::value(&recipe_file)->required(), "recipe file (.ini)")(
      "resume", "continue from the run's newest complete checkpoint")(
      "stop-at", po::value(&stop_at)->default_value(0), "stop after this step without a final checkpoint (crash drill)")(
      "print-recipe", "print the fully resolved recipe and exit")(
      "print-schedule", "print the learning rate of every step (\"step lr\" lines) and exit");
  po::positional_options_description pos;
  pos.add("recipe", 1);
  po::variables_map vm;
  // --section.key=value arguments are recipe overrides (an empty value is allowed); the rest are options.
  std::vector<std::string> overrides, options;
  for (auto& a : args) {
    size_t eq = a.find('='), dot = a.find('.');
    bool is_override = a.rfind("--", 0) == 0 && dot != std::string::npos && (eq == std::string::npos || dot < eq);
    (is_override ? overrides : options).push_back(a);
  }
  std::string usage = "chunkwise train RECIPE [--resume] [--section.key=value ...]\n\nrecipe keys (override any "
                      "as --section.key=value):" + recipe_keys_help();
  if (!parse_args(options, desc, pos, vm, usage)) return 0;
  Recipe r = Recipe::load(recipe_file, overrides);
  if (vm.count("print-recipe")) {
    std::cout << r.resolved_ini();
    return 0;
  }
  if (vm.count("print-schedule")) {
    std::cout << schedule_table(*make_schedule(r), r.i("train.steps"));
    return 0;
  }
  TrainOptions o;
  o.resume = vm.count("resume") > 0;
  o.stop_at = stop_at;
  install_stop_handlers();
  o.stop_requested = [] { return g_stop_signal != 0; };
  TrainResult res = train(r, o);
  // Stopped early on request: exit as the signal would have (128 + its number), so schedulers see the job did not
  // finish; a rank that stopped on another rank's request reports SIGTERM.
  const int rc = res.stopped_on_request ? 128 + (g_stop_signal ? int(g_stop_signal) : SIGTERM) : 0;
  if (DistEnv::from_environment().rank != 0) return rc;  // data-parallel: rank 0 reports
  if (rc) return rc;
  std::cout << "done: step " << res.last_step << " in " << res.run_dir.string();
  if (!std::isnan(res.val_loss))
    std::cout << " | val loss " << res.val_loss << " vs unigram entropy " << res.unigram_entropy << " nats";
  std::cout << "\n";
  return 0;
}

int recipe_main(const Args& args) {
  if (args.empty() || args[0] != "keys") fail("usage: chunkwise recipe keys [--markdown]");
  bool md = args.size() > 1 && args[1] == "--markdown";
  std::cout << (md ? recipe_keys_markdown() : recipe_keys_help());
  return 0;
}

}  // namespace cw::cli
