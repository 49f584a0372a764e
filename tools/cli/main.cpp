// Entry point of the `chunkwise` binary: dispatches subcommands and turns errors into messages and exit
// codes (2: something to fix in the input or recipe, 3: out of memory, 1: internal error).
// Must not: contain subcommand logic.
#include <c10/util/Exception.h>

#include <cstring>
#include <iostream>
#include <string>

#include "common/error.h"
#include "tools/cli/commands.h"

namespace {
const char* kUsage = R"(chunkwise: train, fine-tune and serve language models from recipe files

usage: chunkwise COMMAND [ARGS] (each command takes --help)

commands:
  data fetch NAME          put a named corpus from Debian's archive into the cache
  data tokenizer ...       train a SentencePiece tokenizer on a corpus
  data prepare ...         tokenize a corpus into HDF5 train/val stores
  data info STORE          print a store's contents and tokenizer identity
  data decompose STORE     dataset decomposition: power-of-two length buckets, written into the store
  data order STORE         in-context pretraining order (kNN graph + greedy walk), written into the store
  data recut SOURCE OUT    a store's tokens re-cut into documents of log-normal lengths (throughput studies)
  train RECIPE [--resume] [--section.key=value ...]
                           train from a recipe
  sample RUN|CHECKPOINT    generate text from a trained model
  export RUN|CHECKPOINT OUT_DIR
                           write a Hugging Face-compatible bundle (config.json, safetensors, tokenizer.model)
  generate BUNDLE --prompt TEXT [--device auto|cpu|cuda]
                           stream a continuation with the inference engine
  batch BUNDLE IN.jsonl OUT.jsonl [--prefix-sharing on]
                           run an offline generation job (continuous batching, chunked prefill)
  plot RUN                 draw the run's loss curves into RUN/loss.png
  recipe keys [--markdown] list every recipe key with type, default and meaning
  bench train --config 124m|350m
                           time the training step of the reference configurations (random tokens)
  bench order ...          time in-context ordering on synthetic embeddings
  bench serve [--scenario all|batch1|batch64|prefix|mixed|profile] [--mixed-budget N ...]
                           time the inference engine on a TinyLlama-shaped model with random weights
)";
}

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  cw::cli::Args args(argv + 2, argv + argc);
  try {
    if (cmd == "data") return cw::cli::data_main(args);
    if (cmd == "train") return cw::cli::train_main(args);
    if (cmd == "sample") return cw::cli::sample_main(args);
    if (cmd == "plot") return cw::cli::plot_main(args);
    if (cmd == "recipe") return cw::cli::recipe_main(args);
    if (cmd == "bench") return cw::cli::bench_main(args);
    if (cmd == "export") return cw::cli::export_main(args);
    if (cmd == "generate") return cw::cli::generate_main(args);
    if (cmd == "batch") return cw::cli::batch_main(args);
    std::cerr << "error: unknown command '" << cmd << "'\n\n" << kUsage;
    return 2;
  } catch (const cw::UserError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const c10::OutOfMemoryError& e) {
    std::cerr << "error: out of memory: " << e.what_without_backtrace()
              << "\nLower [data] batch_size (raise [train] grad_accum to keep tokens per step) or [data] seq_len.\n";
    return 3;
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of host memory. Lower [data] batch_size or use a smaller corpus.\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
