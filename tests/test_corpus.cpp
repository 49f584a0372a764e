// Corpus reading: formats (text, reST, HTML, JSONL, gzip), sorted order, UTF-8 repair, clear errors.
#include <gtest/gtest.h>
#include <zlib.h>

#include "common/error.h"
#include "data/corpus.h"
#include "tests/test_util.h"

using namespace cw;
using namespace cw::test;

TEST(Corpus, HtmlBecomesText) {
  std::string t = html_to_text(
      "<html><head><style>p{color:red}</style><script>var x=1<2;</script></head><body><h1>Title</h1>"
      "<p>A &amp; B &lt;c&gt; &#233;&#x41;</p><!-- hidden --><pre>  keep\n  this</pre></body></html>");
  EXPECT_EQ(t.find("color"), std::string::npos);
  EXPECT_EQ(t.find("var x"), std::string::npos);
  EXPECT_EQ(t.find("hidden"), std::string::npos);
  EXPECT_NE(t.find("Title\n"), std::string::npos) << t;
  EXPECT_NE(t.find("A & B <c> \xC3\xA9" "A"), std::string::npos) << t;
  EXPECT_NE(t.find("  keep\n  this"), std::string::npos) << t;
}

TEST(Corpus, InvalidUtf8IsReplaced) {
  EXPECT_EQ(sanitize_utf8("ok \xC3\xA9"), "ok \xC3\xA9");
  EXPECT_EQ(sanitize_utf8("a\xFF" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(sanitize_utf8("\xE2\x82"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // truncated sequence
  EXPECT_EQ(sanitize_utf8(std::string("a\0b", 3)), "a\xEF\xBF\xBD" "b");
}

TEST(Corpus, ReadsFoldersInSortedOrderWithAllFormats) {
  auto dir = scratch_dir("corpus-formats");
  write_text(dir / "b.rst", "Heading\n=======\n\nBody text.\n");
  write_text(dir / "a/page.html", "<p>Hello <b>web</b></p>");
  write_text(dir / "c.jsonl", "{\"text\": \"first record\", \"id\": 1}\n\n{\"text\": \"second\"}\n");
  write_text(dir / "skip.bin", "\x01\x02");
  write_text(dir / "empty.txt", "   \n");
  {
    gzFile g = gzopen((dir / "d.rst.gz").c_str(), "wb");
    std::string s = "compressed doc\n";
    gzwrite(g, s.data(), unsigned(s.size()));
    gzclose(g);
  }
  auto docs = read_documents({dir.string()});
  ASSERT_EQ(docs.size(), 5u);
  EXPECT_EQ(docs[0].source, "a/page.html");
  EXPECT_NE(docs[0].text.find("Hello web"), std::string::npos);
  EXPECT_EQ(docs[1].source, "b.rst");
  EXPECT_EQ(docs[2].source, "c.jsonl:1");
  EXPECT_EQ(docs[2].text, "first record");
  EXPECT_EQ(docs[3].source, "c.jsonl:3");
  EXPECT_EQ(docs[4].text, "compressed doc\n");
}

TEST(Corpus, BadInputsGiveClearErrors) {
  auto dir = scratch_dir("corpus-bad");
  write_text(dir / "x.jsonl", "{\"body\": \"no text field\"}\n");
  try {
    read_documents({(dir / "x.jsonl").string()});
    ADD_FAILURE();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("\"text\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_documents({(dir / "missing").string()}), UserError);
  write_text(dir / "corrupt.rst.gz", "not gzip at all, but long enough to look like data........");
  auto sub = scratch_dir("corpus-bad-empty");
  EXPECT_THROW(read_documents({sub.string()}), UserError);
}
