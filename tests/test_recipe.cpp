// Recipes: precedence (command line > file > base > default), every error path names key and file,
// and the docs page holds the table the code uses.
#include <gtest/gtest.h>

#include "common/error.h"
#include "common/files.h"
#include "tests/test_util.h"
#include "train/recipe.h"

using namespace cw;
using namespace cw::test;

TEST(Recipe, PrecedenceCommandLineOverFileOverBaseOverDefault) {
  auto dir = scratch_dir("recipe-prec");
  write_text(dir / "base.ini", "[model]\nd_model = 128\nn_layers = 3\n[optim]\nlr = 0.01\n");
  write_text(dir / "child.ini", "extends = base.ini\n[model]\nd_model = 64\n");
  Recipe r = Recipe::load(dir / "child.ini", {"--optim.lr=0.1", "--optim.lr=0.5"});  // the last override wins
  EXPECT_EQ(r.i("model.d_model"), 64);
  EXPECT_EQ(r.i("model.n_layers"), 3);
  EXPECT_DOUBLE_EQ(r.f("optim.lr"), 0.5);
  EXPECT_EQ(r.i("model.n_heads"), 4);  // default
  EXPECT_EQ(r.origin("model.n_layers"), (dir / "base.ini").string());
  EXPECT_EQ(r.origin("optim.lr"), "command line");
  Recipe again = Recipe::from_text(r.resolved_ini(), "resolved");
  for (auto& k : recipe_keys()) EXPECT_EQ(again.s(k.name), r.s(k.name)) << k.name;
}

TEST(Recipe, UnknownKeyNamesKeyFileAndAllowedKeys) {
  auto dir = scratch_dir("recipe-unknown");
  write_text(dir / "r.ini", "[model]\nd_modle = 64\n");
  std::string e = user_error_of([&] { Recipe::load(dir / "r.ini"); });
  EXPECT_NE(e.find("model.d_modle"), std::string::npos) << e;
  EXPECT_NE(e.find("r.ini"), std::string::npos) << e;
  EXPECT_NE(e.find("model.d_model"), std::string::npos) << e;  // lists what is allowed
  e = user_error_of([&] { Recipe::load(dir / "r.ini", {}); });
  write_text(dir / "s.ini", "[modle]\nd_model = 64\n");
  e = user_error_of([&] { Recipe::load(dir / "s.ini"); });
  EXPECT_NE(e.find("modle.d_model"), std::string::npos) << e;
  EXPECT_NE(e.find("[model]"), std::string::npos) << e;
}

TEST(Recipe, WrongTypesAndChoicesAreRejected) {
  auto dir = scratch_dir("recipe-types");
  write_text(dir / "r.ini", "[model]\nd_model = wide\n");
  std::string e = user_error_of([&] { Recipe::load(dir / "r.ini"); });
  EXPECT_NE(e.find("model.d_model"), std::string::npos) << e;
  EXPECT_NE(e.find("integer"), std::string::npos) << e;
  EXPECT_NE(e.find("r.ini"), std::string::npos) << e;
  write_text(dir / "ok.ini", "[model]\nd_model = 64\n");
  e = user_error_of([&] { Recipe::load(dir / "ok.ini", {"--optim.lr=fast"}); });
  EXPECT_NE(e.find("command line"), std::string::npos) << e;
  EXPECT_NE(e.find("optim.lr"), std::string::npos) << e;
  e = user_error_of([&] { Recipe::load(dir / "ok.ini", {"--model.family=gpt9"}); });
  EXPECT_NE(e.find("one of: llama"), std::string::npos) << e;
  e = user_error_of([&] { Recipe::load(dir / "ok.ini", {"--model.tie_embeddings=maybe"}); });
  EXPECT_NE(e.find("true or false"), std::string::npos) << e;
  e = user_error_of([&] { Recipe::load(dir / "ok.ini", {"--model.d_model"}); });
  EXPECT_NE(e.find("--section.key=value"), std::string::npos) << e;
  e = user_error_of([&] { Recipe::load(dir / "ok.ini", {"--model.nope=1"}); });
  EXPECT_NE(e.find("model.nope"), std::string::npos) << e;
  write_text(dir / "dup.ini", "[model]\nd_model = 64\nd_model = 65\n");
  EXPECT_FALSE(user_error_of([&] { Recipe::load(dir / "dup.ini"); }).empty());
}

// Numbers outside their key's range are refused where they are read, naming key, source and range (a zero
// log_every used to divide by zero mid-run, a zero eval_batches to report a NaN validation loss, a beta1 above 1
// or a negative rope_theta to train into NaNs); the ends of each range are accepted.
TEST(Recipe, NumbersOutsideTheirRangeAreRejected) {
  auto dir = scratch_dir("recipe-ranges");
  write_text(dir / "r.ini", "[optim]\nbeta1 = 1.5\n");
  std::string e = user_error_of([&] { Recipe::load(dir / "r.ini"); });
  EXPECT_NE(e.find("r.ini: optim.beta1 = '1.5' is not a number in [0, 1)"), std::string::npos) << e;
  write_text(dir / "ok.ini", "[model]\nd_model = 64\n");
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"--train.log_every=0", "an integer >= 1"},       {"--train.eval_batches=0", "an integer >= 1"},
      {"--model.rope_theta=-1", "a number > 0"},        {"--optim.grad_clip=-1", "a number >= 0"},
      {"--data.replay_fraction=1.01", "in [0, 1]"},     {"--train.keep=-1", "an integer >= 0"},
      {"--optim.weight_decay=-0.1", "a number >= 0"},   {"--sparsity.level=1", "in [0, 1)"}};
  for (const auto& [flag, range] : refused) {
    e = user_error_of([&] { Recipe::load(dir / "ok.ini", {flag}); });
    EXPECT_NE(e.find("command line: " + flag.substr(2, flag.find('=') - 2)), std::string::npos) << e;
    EXPECT_NE(e.find(range), std::string::npos) << flag << ": " << e;
  }
  for (const std::string flag : {"--train.log_every=1", "--optim.beta1=0", "--optim.grad_clip=0",
                                 "--data.replay_fraction=1", "--train.keep=0", "--sparsity.level=0.99"})
    EXPECT_EQ(user_error_of([&] { Recipe::load(dir / "ok.ini", {flag}); }), "") << flag;
  EXPECT_NE(recipe_keys_help().find("--optim.beta1=number in [0, 1)"), std::string::npos);
}

TEST(Recipe, MissingFilesAndCyclesAreRejected) {
  auto dir = scratch_dir("recipe-missing");
  std::string e = user_error_of([&] { Recipe::load(dir / "none.ini"); });
  EXPECT_NE(e.find("not found"), std::string::npos) << e;
  write_text(dir / "child.ini", "extends = gone.ini\n");
  e = user_error_of([&] { Recipe::load(dir / "child.ini"); });
  EXPECT_NE(e.find("gone.ini"), std::string::npos) << e;
  EXPECT_NE(e.find("child.ini"), std::string::npos) << e;
  write_text(dir / "a.ini", "extends = b.ini\n");
  write_text(dir / "b.ini", "extends = a.ini\n");
  e = user_error_of([&] { Recipe::load(dir / "a.ini"); });
  EXPECT_NE(e.find("extends itself"), std::string::npos) << e;
}

TEST(Recipe, DocsPageHoldsTheKeyTable) {
  std::string page = read_file(fs::path(source_dir()) / "docs" / "recipes.md");
  EXPECT_NE(page.find(recipe_keys_markdown()), std::string::npos)
      << "docs/recipes.md is out of date: paste `chunkwise recipe keys --markdown` into it";
}

TEST(Recipe, ShippedRecipesLoad) {
  for (auto& e : list_dir(fs::path(source_dir()) / "recipes")) {
    if (e.path.extension() != ".ini") continue;
    EXPECT_NO_THROW(Recipe::load(e.path)) << e.path;
  }
}
