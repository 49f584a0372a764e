// `chunkwise bench order`: times the in-context ordering pipeline (exact kNN + greedy walk) on synthetic
// clustered embeddings, so its scale can be measured without a corpus of that size.
#include <chrono>
#include <iostream>

#include "data/icp_order.h"
#include "train/model_setup.h"
#include "tools/cli/commands.h"
#include "tools/cli/options.h"

namespace cw::cli {

static int bench_order(const Args& args) {
  po::options_description desc("bench order options");
  int64_t docs, dim, k, block, clusters;
  std::string device;
  desc.add_options()("docs", po::value(&docs)->default_value(100000), "documents")(
      "dim", po::value(&dim)->default_value(256), "embedding dimensions")(
      "k", po::value(&k)->default_value(50), "neighbours")(
      "block", po::value(&block)->default_value(1024), "query rows per matrix product")(
      "clusters", po::value(&clusters)->default_value(1000), "topics the synthetic documents come from")(
      "device", po::value(&device)->default_value("auto"), "auto | cpu | cuda");
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise bench order [--docs 100000] [--device auto]")) return 0;
  torch::Device dev = resolve_device(device);
  torch::manual_seed(1);
  auto centers = torch::randn({clusters, dim});
  auto topic = torch::randint(0, clusters, {docs}, torch::kInt64);
  auto emb = torch::nn::functional::normalize(centers.index_select(0, topic) + 0.7 * torch::randn({docs, dim}),
                                              torch::nn::functional::NormalizeFuncOptions().dim(1));
  auto t0 = std::chrono::steady_clock::now();
  KnnGraph g = knn_exact(emb, k, block, dev);
  if (dev.is_cuda()) torch::cuda::synchronize();
  double knn_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  t0 = std::chrono::steady_clock::now();
  int64_t dropped = 0;
  auto order = greedy_walk(g, nullptr, &dropped);
  double walk_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<uint64_t> o(order.begin(), order.end());
  auto same_topic = (topic.index_select(0, torch::tensor(std::vector<int64_t>(order.begin(), order.end() - 1))) ==
                     topic.index_select(0, torch::tensor(std::vector<int64_t>(order.begin() + 1, order.end()))))
                        .to(torch::kFloat64).mean().item<double>();
  std::cout << "{\"bench\": \"order\", \"docs\": " << docs << ", \"dim\": " << dim << ", \"k\": " << k
            << ", \"device\": \"" << dev.str() << "\", \"knn_s\": " << knn_s << ", \"walk_s\": " << walk_s
            << ", \"total_s\": " << knn_s + walk_s << ", \"adjacent_same_topic\": " << same_topic
            << ", \"random_same_topic\": " << 1.0 / double(clusters) << "}\n";
  return 0;
}

int bench_main(const Args& args) {
  if (args.empty() || args[0] != "order") fail("usage: chunkwise bench order [--help]");
  return bench_order(Args(args.begin() + 1, args.end()));
}

}  // namespace cw::cli
