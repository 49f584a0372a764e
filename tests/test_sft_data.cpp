// Enterprise fine-tuning data (data/doc_sections.h, data/code_functions.h, data/sft_pairs.h, data/sft_store.h):
// documents split by their structure (Markdown, reST, HTML without page furniture), chunks within the budget
// with their overlap, documented functions in Python/Go/C-family code, pair datasets split by source with
// provenance, SFT stores whose loss is on responses only (the sampler's targets counted), refusals of
// incomplete or bad inputs, and a fine-tuning run on such a store through the CLI and the trainer.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "data/code_functions.h"
#include "data/doc_sections.h"
#include "data/packing_sampler.h"
#include "data/sft_pairs.h"
#include "data/sft_store.h"
#include "data/token_store.h"
#include "data/tokenizer.h"
#include "tests/test_util.h"
#include "train/trainer.h"

using namespace cw;
using namespace cw::test;

namespace {

std::vector<json> read_jsonl(const fs::path& p) {
  std::vector<json> out;
  std::ifstream in(p);
  for (std::string line; std::getline(in, line);) out.push_back(json::parse(line));
  return out;
}

// A small company wiki: Markdown, reST and HTML pages and two source files.
fs::path company_docs(const std::string& name) {
  fs::path dir = scratch_dir(name);
  for (int i = 0; i < 6; ++i) {
    std::ostringstream md;
    md << "# Service " << i << "\n\nService " << i << " stores invoices for the billing team.\n\n## Deploying\n\n"
       << "Run the deploy script with the region flag. Rollbacks use the previous image tag.\n\n"
       << "## Alerts\n\nPager alerts go to the on-call engineer of team " << i << ".\n";
    write_text(dir / ("service" + std::to_string(i) + ".md"), md.str());
  }
  write_text(dir / "guide.rst", "=====\nGuide\n=====\n\nThe guide explains invoices.\n\n.. _setup-label:\n\n"
                                "Setup\n-----\n\nInstall the billing client first.\n");
  write_text(dir / "faq.html", "<html><head><title>FAQ page</title></head><body><div class=\"navheader\">Prev Next"
                               "</div><h1 id=\"faq\">FAQ</h1><p>Questions about invoices.</p><div id=\"refunds\">"
                               "<h2>How are refunds made?</h2><p>Refunds go back to the original card.</p></div>"
                               "<footer>Copyright</footer></body></html>");
  write_text(dir / "billing.py", "def total(items):\n    \"\"\"Sum the amounts of ITEMS.\n\n    Longer text.\n"
                                 "    \"\"\"\n    return sum(i.amount for i in items)\n\n\ndef undocumented(x):\n"
                                 "    return x\n");
  write_text(dir / "ledger.go", "package ledger\n\n// Balance returns the account's balance in cents.\nfunc (a *Account) "
                                "Balance() int {\n\treturn a.cents // not \"}\" a brace\n}\n\nfunc hidden() {}\n");
  return dir;
}

}  // namespace

TEST(DocSections, MarkdownHeadingsParagraphsAndFences) {
  auto d = split_structure("notes/a.md", "---\ntitle: x\n---\nIntro text.\n\n# Top Title\n\nFirst para\nwraps.\n\n"
                                         "Second Part\n-----------\n\n```\n# not a heading\n\ncode line\n```\n\n"
                                         "### Deep #\ntext\n");
  EXPECT_EQ(d.title, "Top Title");
  ASSERT_EQ(d.sections.size(), 4u);
  EXPECT_TRUE(d.sections[0].headings.empty());
  EXPECT_EQ(d.sections[0].paragraphs, std::vector<std::string>{"Intro text."});
  EXPECT_EQ(d.sections[1].paragraphs, std::vector<std::string>{"First para\nwraps."});
  EXPECT_EQ(d.sections[2].headings, (std::vector<std::string>{"Top Title", "Second Part"}));
  EXPECT_EQ(d.sections[2].anchor, "second-part");
  ASSERT_EQ(d.sections[2].paragraphs.size(), 1u);  // the fence is one paragraph, blank line and all
  EXPECT_EQ(d.sections[2].paragraphs[0], "```\n# not a heading\n\ncode line\n```");
  EXPECT_EQ(d.sections[3].headings, (std::vector<std::string>{"Top Title", "Second Part", "Deep"}));
}

TEST(DocSections, RestTitlesLevelsAndLabels) {
  auto d = split_structure("x.rst.txt", "=====\nGuide\n=====\n\nIntro.\n\n.. _setup-label:\n\nSetup\n-----\n\nStep one.\n\n"
                                        "Details\n~~~~~~~\n\nMore.\n\nOther\n-----\n\nLast.\n");
  EXPECT_EQ(d.title, "Guide");
  ASSERT_EQ(d.sections.size(), 4u);
  EXPECT_EQ(d.sections[1].anchor, "setup-label");
  EXPECT_EQ(d.sections[2].headings, (std::vector<std::string>{"Guide", "Setup", "Details"}));
  EXPECT_EQ(d.sections[3].headings, (std::vector<std::string>{"Guide", "Other"}));  // '-' is level 2 again
  EXPECT_EQ(d.sections[3].paragraphs, std::vector<std::string>{"Last."});
}

TEST(DocSections, HtmlHeadingsAnchorsWithoutPageFurniture) {
  auto d = split_structure("p.html", "<html><head><title>T</title></head><body><div class=\"navheader\"><a>Prev</a>"
                                     "</div><div class=\"sect1\" id=\"S1\"><h2 class=\"t\">One &amp; Two</h2><p>Alpha\n"
                                     "beta.</p><pre>line 1\n  line 2</pre></div><h3><a name=\"n3\"></a>Three</h3><p>"
                                     "Gamma.</p><footer>Copyright</footer></body></html>");
  ASSERT_EQ(d.sections.size(), 2u);
  EXPECT_EQ(d.title, "One & Two");
  EXPECT_EQ(d.sections[0].anchor, "S1");
  EXPECT_EQ(d.sections[0].paragraphs, (std::vector<std::string>{"Alpha beta.", "line 1\n  line 2"}));
  EXPECT_EQ(d.sections[1].anchor, "n3");
  EXPECT_EQ(d.sections[1].paragraphs, std::vector<std::string>{"Gamma."});
  for (auto& s : d.sections)
    for (auto& p : s.paragraphs) EXPECT_EQ(p.find("Prev"), std::string::npos) << p;
}

TEST(ChunkSections, BudgetOverlapAndLongParagraphs) {
  StructuredDoc doc;
  doc.sections.resize(2);
  std::string long_para;
  for (int i = 0; i < 120; ++i) long_para += "w" + std::to_string(i) + (i % 10 == 9 ? ". " : " ");
  doc.sections[0].paragraphs = {"a b c", long_para, "x y"};
  std::string code;
  for (int i = 0; i < 30; ++i) code += "line " + std::to_string(i) + " of code\n";
  doc.sections[1].paragraphs = {code};
  auto chunks = chunk_sections(doc, 40, 6);
  ASSERT_GE(chunks.size(), 5u);
  std::string prev;
  size_t prev_section = 99;
  for (auto& c : chunks) {
    EXPECT_LE(c.tokens, 40) << c.text;
    EXPECT_EQ(c.tokens, count_words(c.text));
    if (c.section == prev_section) {  // starts with the previous chunk's last words
      std::istringstream a(prev);
      std::vector<std::string> words{std::istream_iterator<std::string>(a), {}};
      std::istringstream b(c.text);
      std::string first;
      b >> first;
      EXPECT_GE(count_words(prev), 6);
      EXPECT_EQ(first, words[words.size() - 6]) << c.text;
    }
    prev = c.text, prev_section = c.section;
  }
  // Every word of the section appears, in order, across the chunks.
  std::string all;
  for (auto& c : chunks)
    if (c.section == 0) all += c.text + " ";
  for (int i = 0; i < 120; ++i)
    EXPECT_NE(all.find("w" + std::to_string(i) + (i % 10 == 9 ? "." : " ")), std::string::npos) << i;
  // Code is cut between lines: every line of each piece is whole.
  for (auto& c : chunks)
    if (c.section == 1)
      for (size_t at = c.text.find("line "); at != std::string::npos; at = c.text.find("line ", at + 1))
        EXPECT_NE(c.text.find(" of code", at), std::string::npos);
}

TEST(CodeFunctions, PythonGoAndCFamily) {
  auto py = documented_functions("m/x.py", "class Cart:\n    def add(self, item):\n        '''Add ITEM to the cart.'''\n"
                                           "        self.items.append(item)\n\ndef bare():\n    pass\n");
  ASSERT_EQ(py.size(), 1u);
  EXPECT_EQ(py[0].name, "Cart.add");
  EXPECT_EQ(py[0].summary, "Add ITEM to the cart.");
  EXPECT_EQ(py[0].code, "def add(self, item):\n    self.items.append(item)\n");  // the docstring left out
  EXPECT_EQ(py[0].line, 2);
  auto go = documented_functions("x.go", "// Balance returns\n// the balance.\n//\n// More.\nfunc (a *Account) Balance() int {"
                                         "\n\ts := \"}\"\n\treturn len(s)\n}\n\nfunc hidden() {}\n");
  ASSERT_EQ(go.size(), 1u);
  EXPECT_EQ(go[0].name, "Account.Balance");
  EXPECT_EQ(go[0].summary, "Balance returns the balance.");
  EXPECT_EQ(go[0].code.substr(go[0].code.size() - 2), "}\n");
  EXPECT_NE(go[0].code.find("return len(s)"), std::string::npos);
  auto c = documented_functions("x.cc", "/** Adds two\n * numbers. */\nint add(int a,\n        int b) {\n  return a + b;\n}\n"
                                        "/// A prototype.\nint sub(int a, int b);\n// Loops.\nvoid f() {\n  if (x) {\n"
                                        "    y();\n  }\n}\n");
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].name, "add");
  EXPECT_EQ(c[0].summary, "Adds two numbers.");
  EXPECT_EQ(c[0].language, "C++");
  EXPECT_EQ(c[1].name, "f");
  EXPECT_EQ(c[1].code, "void f() {\n  if (x) {\n    y();\n  }\n}\n");
  EXPECT_TRUE(documented_functions("notes.txt", "// X does\nint x() {}\n").empty());
}

TEST(SftPairs, SplitBySourceWithProvenanceAndDeterministic) {
  fs::path docs = company_docs("sft-docs");
  fs::path out = scratch_dir("sft-pairs");
  PairOptions o;
  o.inputs = {docs.string()};
  o.out_dir = out;
  o.budget = 24, o.overlap = 4, o.test_fraction = 0.3;
  PairReport rep = build_pairs(o);
  auto train = read_jsonl(out / "train.jsonl"), test = read_jsonl(out / "test.jsonl");
  json m = json::parse(read_file(out / "pairs.json"));
  EXPECT_EQ(m["train_records"].get<size_t>(), train.size());
  EXPECT_EQ(m["test_records"].get<size_t>(), test.size());
  ASSERT_FALSE(train.empty());
  ASSERT_FALSE(test.empty());
  std::set<std::string> train_sources, test_sources, kinds;
  for (auto& r : train) train_sources.insert(r["source"]), kinds.insert(r["kind"]);
  for (auto& r : test) test_sources.insert(r["source"]);
  for (auto& s : test_sources) EXPECT_FALSE(train_sources.count(s)) << s << " is in both splits";
  EXPECT_EQ(kinds, (std::set<std::string>{"function", "keyword", "paragraph", "qa"}));
  EXPECT_EQ(rep.test_documents, int64_t(test_sources.size()));
  bool refund_question = false, balance = false, total = false;
  for (auto* set : {&train, &test})
    for (auto& r : *set) {
      const std::string kind = r["kind"], prompt = r["prompt"], response = r["response"];
      EXPECT_FALSE(r["source"].get<std::string>().empty());
      if (kind != "paragraph") EXPECT_FALSE(prompt.empty()) << kind;
      if (kind == "paragraph" || kind == "qa" || kind == "keyword") EXPECT_LE(count_words(response), 24 + 12);
      if (kind == "qa" && prompt.rfind("How are refunds made?", 0) == 0) {
        refund_question = true;
        EXPECT_EQ(response, "Refunds go back to the original card.");
        EXPECT_EQ(r["anchor"], "refunds");
      }
      if (kind == "keyword") {  // every keyword occurs in the passage it points to
        std::string words = prompt.substr(10, prompt.find('\n') - 10), lower = response;
        for (auto& ch : lower) ch = char(std::tolower((unsigned char)ch));
        std::stringstream ss(words);
        for (std::string w; std::getline(ss, w, ',');) {
          while (!w.empty() && w[0] == ' ') w.erase(0, 1);
          EXPECT_NE(lower.find(w), std::string::npos) << w << " not in " << response;
        }
      }
      if (kind == "function" && r["anchor"] == "Account.Balance@4") balance = true;
      if (kind == "function" && r["anchor"] == "total@1") {
        total = true;
        EXPECT_EQ(prompt.rfind("Sum the amounts of ITEMS.", 0), 0u) << prompt;
        EXPECT_EQ(response.find("Longer text"), std::string::npos);
      }
      EXPECT_EQ(prompt.find("FAQ page"), std::string::npos);  // the HTML head is not content
    }
  EXPECT_TRUE(refund_question && balance && total);
  // The same inputs give the same bytes.
  const std::string first = read_file(out / "train.jsonl");
  build_pairs(o);
  EXPECT_EQ(read_file(out / "train.jsonl"), first);
}

TEST(SftPairs, BadSettingsAndEmptyInputsAreRefused) {
  fs::path docs = company_docs("sft-docs-bad"), out = scratch_dir("sft-pairs-bad");
  PairOptions o;
  o.inputs = {docs.string()};
  o.out_dir = out;
  o.kinds = {"qa", "summary"};
  EXPECT_NE(user_error_of([&] { build_pairs(o); }).find("unknown kind 'summary'"), std::string::npos);
  o.kinds = {"qa"};
  o.budget = 8;
  EXPECT_NE(user_error_of([&] { build_pairs(o); }).find("--budget"), std::string::npos);
  o.budget = 64;
  fs::path empty = scratch_dir("sft-empty");
  write_text(empty / "x.py", "def f():\n    return 1\n");  // nothing documented
  o.inputs = {empty.string()}, o.kinds = {"function"};
  EXPECT_NE(user_error_of([&] { build_pairs(o); }).find("no records"), std::string::npos);
  EXPECT_FALSE(fs::exists(out / "pairs.json"));
}

TEST(SftStore, LossOnlyOnResponsesAndIncompleteFoldersRefused) {
  fs::path docs = company_docs("sft-store-docs"), pairs = scratch_dir("sft-store-pairs");
  PairOptions po;
  po.inputs = {docs.string()}, po.out_dir = pairs, po.budget = 32, po.overlap = 4, po.test_fraction = 0.3;
  build_pairs(po);
  fs::path out = scratch_dir("sft-store");
  SftPrepareOptions o;
  o.pairs = pairs, o.tokenizer = shared_tokenizer(), o.out_dir = out;
  SftPrepareReport rep = prepare_sft(o);
  auto store = read_token_store(out / "train.h5");
  auto lb = read_sft_loss_begin(out / "train.h5", store.doc_offsets);
  ASSERT_EQ(int64_t(lb.size()), store.n_docs());
  EXPECT_EQ(rep.train_examples, store.n_docs());
  Tokenizer tok = Tokenizer::load(shared_tokenizer());
  auto records = read_jsonl(pairs / "train.jsonl");
  ASSERT_EQ(records.size(), lb.size());
  int64_t expected_targets = 0, answer_tokens = 0;
  for (size_t d = 0; d < lb.size(); ++d) {
    const uint64_t begin = store.doc_offsets[d], len = store.doc_offsets[d + 1] - begin;
    std::vector<int> prompt(store.tokens.begin() + int64_t(begin), store.tokens.begin() + int64_t(begin + lb[d]));
    EXPECT_EQ(tok.decode(prompt), apply_sft_template(o.prompt_template, records[d]["prompt"]));
    EXPECT_EQ(lb[d] == 0, records[d]["prompt"] == "") << d;  // paragraph chunks: loss on all of them
    expected_targets += int64_t(len) - std::max<int64_t>(1, int64_t(lb[d]));
    answer_tokens += int64_t(len - lb[d]);
  }
  EXPECT_EQ(rep.train_answer_tokens, answer_tokens);
  // Packed rows long enough for every example: one epoch's targets are exactly the response tokens.
  PackingOptions pk;
  pk.seq_len = 1024, pk.batch_size = 1;
  auto tokens = std::make_shared<const std::vector<uint32_t>>(store.tokens);
  PackingSampler sampler(tokens, store.doc_offsets, pk, lb);
  int64_t targets = 0;
  for (int64_t i = 0; i < sampler.rows_per_epoch(); ++i) targets += sampler.next().n_target_tokens;
  EXPECT_EQ(targets, expected_targets);
  // A pairs folder whose manifest is missing or whose files were cut is refused, and nothing is written.
  fs::path out2 = scratch_dir("sft-store-bad");
  o.out_dir = out2;
  std::string lines = read_file(pairs / "train.jsonl");
  write_text(pairs / "train.jsonl", lines.substr(0, lines.find('\n') + 1));
  EXPECT_NE(user_error_of([&] { prepare_sft(o); }).find("pairs.json says"), std::string::npos);
  fs::remove(pairs / "pairs.json");
  EXPECT_NE(user_error_of([&] { prepare_sft(o); }).find("pairs.json"), std::string::npos);
  EXPECT_FALSE(fs::exists(out2 / "train.h5"));
}

// The whole path through the CLI: pairs, SFT stores, then fine-tuning with the loss on responses; a store of
// this kind with another strategy is refused, naming what to set.
TEST(Training, FineTunesOnAnSftStoreFromTheCli) {
  fs::path docs = company_docs("sft-cli-docs"), work = scratch_dir("sft-cli");
  std::string output;
  ASSERT_EQ(run_command(chunkwise_bin() + " data pairs --out " + (work / "pairs").string() + " --budget 24 " +
                            "--overlap 4 --test-fraction 0.3 " + docs.string(), &output), 0) << output;
  ASSERT_EQ(run_command(chunkwise_bin() + " data prepare-sft --pairs " + (work / "pairs").string() + " --tokenizer " +
                            shared_tokenizer().string() + " --out " + (work / "sft").string() + " --max-tokens 64",
                        &output), 0) << output;
  EXPECT_NE(output.find("in responses"), std::string::npos) << output;
  Recipe r = tiny_recipe(work, "sft", 40);
  r.set("data.train", (work / "sft" / "train.h5").string());
  r.set("data.val", (work / "sft" / "val.h5").string());
  r.set("data.seq_len", "64");
  r.set("data.strategy", "concat");
  EXPECT_NE(user_error_of([&] { train(r); }).find("strategy = bestfit"), std::string::npos);
  r.set("data.strategy", "bestfit");
  std::ostringstream log;
  TrainOptions to;
  to.out = &log;
  TrainResult res = train(r, to);
  ASSERT_EQ(res.losses.size(), 40u);
  EXPECT_LT(res.losses.back(), res.losses.front() - 1.0) << log.str();
  EXPECT_TRUE(std::isfinite(res.val_loss)) << log.str();
}
