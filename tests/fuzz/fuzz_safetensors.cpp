// libFuzzer target: arbitrary bytes into the safetensors parser. It must either accept the file or throw
// UserError; a crash, out-of-bounds read (AddressSanitizer) or other exception is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include "checkpoints/safetensors.h"
#include "common/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    cw::st::File f = cw::st::decode(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    for (auto& [name, t] : f.tensors) {  // touch every accepted byte range
      volatile char sink = 0;
      for (size_t i = t.begin; i < t.end; i += 61) sink ^= f.bytes[i];
      (void)sink;
    }
  } catch (const cw::UserError&) {
  }
  return 0;
}
