// safetensors: bitwise round trip, interchange with Python's safetensors package in both directions, and
// hostile files (lying headers, out-of-range or overlapping offsets, bad dtypes, deep JSON, truncation).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "checkpoints/safetensors.h"
#include "checkpoints/tensor_io.h"
#include "common/error.h"
#include "common/files.h"
#include "tests/test_util.h"

using namespace cw;
using namespace cw::test;

TEST(Safetensors, RoundTripIsBitwise) {
  auto dir = scratch_dir("st-roundtrip");
  NamedTensors t = {{"a.weight", torch::randn({3, 5})},
                    {"b", torch::randn({7}).to(torch::kBFloat16)},
                    {"c", torch::randint(0, 100, {2, 2, 2}, torch::kInt64)},
                    {"empty", torch::zeros({0, 4})}};
  save_tensors(dir / "x.safetensors", t, {{"k", "v"}});
  std::map<std::string, std::string> meta;
  auto back = load_tensors(dir / "x.safetensors", &meta);
  EXPECT_EQ(meta["k"], "v");
  ASSERT_EQ(back.size(), t.size());
  for (auto& [n, x] : t) {
    ASSERT_TRUE(back.count(n)) << n;
    EXPECT_EQ(back[n].scalar_type(), x.scalar_type());
    EXPECT_TRUE(torch::equal(back[n], x)) << n;
  }
}

TEST(Safetensors, PythonReadsOursAndWeReadPythons) {
  auto dir = scratch_dir("st-python");
  auto a = torch::arange(12, torch::kFloat32).reshape({3, 4}) / 7.0;
  auto b = torch::arange(6, torch::kFloat32).to(torch::kBFloat16);
  save_tensors(dir / "ours.safetensors", {{"model.a", a}, {"model.b", b}});
  std::string out;
  std::string cmd = python() + " " + source_dir() + "/tests/py/check_safetensors.py " + (dir / "ours.safetensors").string() +
                    " " + (dir / "theirs.safetensors").string();
  ASSERT_EQ(run_command(cmd, &out), 0) << out;
  auto theirs = load_tensors(dir / "theirs.safetensors");
  ASSERT_TRUE(theirs.count("x"));
  EXPECT_TRUE(torch::equal(theirs["x"], torch::arange(10, torch::kFloat32).reshape({2, 5}) * 0.5));
  EXPECT_TRUE(torch::equal(theirs["model.a_times_2"], a * 2));
}

static std::string header_file(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\x01');
}

static void expect_rejected(const std::string& bytes, const std::string& needle) {
  try {
    st::decode(bytes, "hostile");
    ADD_FAILURE() << "accepted a hostile file; expected an error containing '" << needle << "'";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Safetensors, HostileFilesGiveClearErrors) {
  expect_rejected("abc", "truncated");
  std::string lying(8, '\0');
  lying[0] = char(0xff), lying[1] = char(0xff);
  expect_rejected(lying + "{}", "exceeds the file");
  expect_rejected(header_file("{not json", 0), "invalid JSON");
  expect_rejected(header_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}})", 8), "outside the data");
  expect_rejected(header_file(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "need 12");
  expect_rejected(header_file(R"({"t":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype");
  expect_rejected(header_file(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "negative");
  expect_rejected(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "overlap");
  expect_rejected(header_file(R"({"t":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}})", 8),
                  "overflows");
  expect_rejected(header_file(std::string(200, '[') + std::string(200, ']'), 0), "nested deeper");
  expect_rejected(header_file(R"({"t":{"dtype":"F32"}})", 0), "lacks");
  // A valid file cut short fails instead of reading past the end.
  std::string good = st::encode({{"w", {st::DType::F32, {4}, "0123456789abcdef", 16}}});
  expect_rejected(good.substr(0, good.size() - 3), "outside the data");
}
