// The CLI's subcommands. Each takes the arguments after its name and returns the exit code;
// user errors are thrown as UserError and turned into a message and exit code 2 by main().
// Must not: hold training or data logic (they call into data/, train/, checkpoints/).
#pragma once
#include <string>
#include <vector>

namespace cw::cli {

using Args = std::vector<std::string>;

int data_main(const Args& args);    // fetch | tokenizer | prepare | info | pairs | prepare-sft | ...
int data_pairs_main(const Args& args);        // data pairs (called by data_main)
int data_prepare_sft_main(const Args& args);  // data prepare-sft (called by data_main)
int train_main(const Args& args);
int sample_main(const Args& args);
int plot_main(const Args& args);
int recipe_main(const Args& args);  // keys
int bench_main(const Args& args);   // train | order
int export_main(const Args& args);
int generate_main(const Args& args);
int batch_main(const Args& args);
int bench_serve_main(const Args& args);  // bench serve (called by bench_main)
}  // namespace cw::cli
