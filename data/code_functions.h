// Documented functions in source files, for summary-function pairs: Python functions with a docstring,
// Go functions with a "// Name ..." comment above them, and C-family functions (C, C++, CUDA, Java,
// JavaScript/TypeScript, Rust) with a /** */, /// or // comment block right above the definition.
// Must not: execute, import or compile anything; read files (the caller passes the text).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace cw {

struct CodeFunction {
  std::string name;      // Class.method for Python methods, Type.Method for Go methods
  std::string language;  // Python, Go, C, C++, CUDA, Java, JavaScript, TypeScript, Rust, ...
  std::string summary;   // the doc comment's first paragraph on one line
  std::string code;      // the definition and body as written (Python: without the docstring)
  int64_t line = 0;      // 1-based line of the definition
};

// Language from SOURCE's extension; no functions for other files.
std::vector<CodeFunction> documented_functions(const std::string& source, const std::string& text);
bool is_code_file(const std::string& source);

}  // namespace cw
