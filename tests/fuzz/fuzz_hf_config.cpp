// libFuzzer target: arbitrary text into the Hugging Face config.json parser. Accept or throw UserError.
#include <cstddef>
#include <cstdint>
#include <string>

#include "checkpoints/hf_config.h"
#include "common/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    cw::parse_hf_config(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const cw::UserError&) {
  }
  return 0;
}
