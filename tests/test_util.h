// Helpers shared by the tests: scratch folders, a small tokenizer trained once per process, running the
// project's Python (h5py, safetensors) and the chunkwise binary.
// Must not: hide assertions (helpers return data; tests assert).
#pragma once
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "data/corpus.h"
#include "models/causal_lm.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace cw::test {

namespace fs = std::filesystem;

fs::path scratch_dir(const std::string& name);  // fresh, empty, under the system temp folder
std::vector<Document> synthetic_corpus(int n_docs, uint64_t seed);  // text with learnable structure
fs::path shared_tokenizer();                                 // trained once on synthetic_corpus(200, 7)
fs::path shared_prepared_data();                             // train.h5 / val.h5 from that tokenizer
// Runs a command; returns its exit code and fills OUTPUT with stdout+stderr.
int run_command(const std::string& cmd, std::string* output);
std::string python();      // $CHUNKWISE_PYTHON
std::string source_dir();  // $CHUNKWISE_SOURCE_DIR
std::string chunkwise_bin();
void write_text(const fs::path& p, const std::string& text);
std::string user_error_of(const std::function<void()>& f);  // the UserError's message, "" if none was thrown
// A 2-layer, d 32 model on shared_prepared_data(): 4 x 32 tokens per step, evaluation and checkpoint every
// 3 steps, one thread (bitwise reproducible).
Recipe tiny_recipe(const fs::path& out_dir, const std::string& name, int64_t steps);
// Sampling 12 tokens after a 5-token prompt through MODEL's decode state gives the tokens that re-running the
// context gives (gtest expectations; for families with a decode state).
void expect_decode_state_samples_as_rerun(CausalLM& model);
// Trains R (silently) and expects its loss to fall by more than a nat and its validation loss to beat the unigram
// entropy; the trainer's log is printed when either fails.
TrainResult expect_trains(const Recipe& r);
// Background jobs (signal tests): runs the bash SCRIPT detached and returns at once; the script records what
// the test needs (PIDs, exit codes) in files. wait_until polls CONDITION for up to SECONDS.
void start_script(const fs::path& script);
bool wait_until(const std::function<bool()>& condition, double seconds);
size_t count_lines(const fs::path& p);  // 0 when the file does not exist
void flip_byte(const fs::path& p, uint64_t offset);
void truncate_file(const fs::path& p, uint64_t size);

}  // namespace cw::test
