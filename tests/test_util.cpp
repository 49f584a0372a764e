// The helpers of tests/test_util.h, shared by the CPU test binary and the GPU training test binary.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/files.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "models/generate.h"
#include "tests/test_util.h"

namespace cw::test {

fs::path scratch_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("chunkwise-test-" + std::to_string(::getpid())) / name;
  remove_tree(p);
  fs::create_directories(p);
  return p;
}

std::vector<Document> synthetic_corpus(int n_docs, uint64_t seed) {
  static const char* subjects[] = {"The kernel", "A process", "The scheduler", "Python", "The parser",
                                   "Each thread", "The allocator", "A module"};
  static const char* verbs[] = {"reads", "writes", "maps", "frees", "locks", "parses", "returns", "checks"};
  static const char* objects[] = {"the page table", "a buffer", "the file", "an integer", "the socket",
                                  "a list of tokens", "the inode", "the dictionary"};
  std::mt19937_64 rng(seed);
  std::vector<Document> docs;
  for (int d = 0; d < n_docs; ++d) {
    std::string text = "Section " + std::to_string(d) + "\n\n";
    int sentences = 5 + int(rng() % 20);
    for (int s = 0; s < sentences; ++s) {
      int a = int(rng() % 8);
      text += std::string(subjects[a]) + " " + verbs[(a + rng() % 2) % 8] + " " + objects[(a * 3 + rng() % 2) % 8] +
              (s % 4 == 3 ? ".\n" : ". ");
    }
    docs.push_back({"doc" + std::to_string(d) + ".txt", text});
  }
  return docs;
}

fs::path shared_tokenizer() {
  static fs::path path;
  if (path.empty()) {
    fs::path dir = scratch_dir("shared-tokenizer");
    TokenizerTrainOptions o;
    o.vocab_size = 400;
    train_tokenizer(synthetic_corpus(200, 7), dir / "tok.model", o);
    path = dir / "tok.model";
  }
  return path;
}

fs::path shared_prepared_data() {
  static fs::path dir;
  if (dir.empty()) {
    fs::path corpus = scratch_dir("shared-corpus");
    for (auto& d : synthetic_corpus(200, 7)) write_text(corpus / d.source, d.text);
    PrepareOptions o;
    o.inputs = {corpus.string()};
    o.tokenizer = shared_tokenizer();
    o.out_dir = scratch_dir("shared-data");
    o.val_fraction = 0.1;
    prepare_corpus(o);
    dir = o.out_dir;
  }
  return dir;
}

int run_command(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (!p) return -1;
  std::array<char, 4096> buf;
  std::string out;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int status = pclose(p);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
std::string python() { return env_or("CHUNKWISE_PYTHON", CW_TEST_PYTHON); }
std::string source_dir() { return env_or("CHUNKWISE_SOURCE_DIR", CW_TEST_SOURCE_DIR); }
std::string chunkwise_bin() { return env_or("CHUNKWISE_BIN", CW_TEST_BIN); }

void write_text(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

void start_script(const fs::path& script) {
  const std::string cmd = "bash " + script.string() + " > /dev/null 2>&1 &";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("could not start " + script.string());
}

bool wait_until(const std::function<bool()>& condition, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!condition()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

size_t count_lines(const fs::path& p) {
  std::ifstream in(p);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += !line.empty();
  return n;
}

void flip_byte(const fs::path& p, uint64_t offset) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(std::streamoff(offset));
  char c;
  f.get(c);
  f.seekp(std::streamoff(offset));
  f.put(char(c ^ 0x5A));
}

void truncate_file(const fs::path& p, uint64_t size) { fs::resize_file(p, size); }

std::string user_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

Recipe tiny_recipe(const fs::path& out_dir, const std::string& name, int64_t steps) {
  fs::path data = shared_prepared_data();
  std::ostringstream ini;
  ini << "[run]\nname = " << name << "\nout_dir = " << out_dir.string() << "\nthreads = 1\nseed = 3\n"
      << "[data]\ntrain = " << (data / "train.h5").string() << "\nval = " << (data / "val.h5").string()
      << "\ntokenizer = " << shared_tokenizer().string() << "\nseq_len = 32\nbatch_size = 4\n"
      << "[model]\nd_model = 32\nn_layers = 2\nn_heads = 2\n"
      << "[optim]\nlr = 3e-3\nmin_lr = 3e-4\n[schedule]\nwarmup_steps = 2\n"
      << "[train]\nsteps = " << steps << "\neval_every = 3\neval_batches = 2\nlog_every = 1\nckpt_every = 3\nkeep = 10\n";
  return Recipe::from_text(ini.str(), name + ".ini");
}

void expect_decode_state_samples_as_rerun(CausalLM& model) {
  GenerateOptions o;
  o.max_new_tokens = 12, o.temperature = 0.9, o.top_k = 0, o.top_p = 1.0, o.seed = 7;
  const std::vector<int64_t> prompt = {1, 4, 2, 9, 3};
  auto cached = generate(model, prompt, o);
  o.decode_state = false;
  auto rerun = generate(model, prompt, o);
  EXPECT_EQ(cached, rerun);
  EXPECT_EQ(cached.size(), 12u);
}

TrainResult expect_trains(const Recipe& r) {
  std::ostringstream log;
  TrainOptions o;
  o.out = &log;
  TrainResult res = train(r, o);
  EXPECT_EQ(int64_t(res.losses.size()), r.i("train.steps"));
  if (res.losses.empty()) return res;
  EXPECT_LT(res.losses.back(), res.losses.front() - 1.0) << log.str();
  EXPECT_LT(res.val_loss, res.unigram_entropy) << log.str();
  return res;
}

}  // namespace cw::test
