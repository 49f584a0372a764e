// Boost.Program_options helpers shared by the subcommands: parse, --help, and error translation.
// Must not: know any subcommand's options.
#pragma once
#include <boost/program_options.hpp>
#include <iostream>
#include <string>
#include <vector>

#include "common/error.h"

namespace cw::cli {

namespace po = boost::program_options;

// Returns false when --help was printed. USAGE is the first help line.
inline bool parse_args(const std::vector<std::string>& args, po::options_description& desc,
                       const po::positional_options_description& pos, po::variables_map& vm,
                       const std::string& usage) {
  desc.add_options()("help,h", "show this help");
  try {
    auto parsed = po::command_line_parser(args).options(desc).positional(pos).run();
    po::store(parsed, vm);
    if (vm.count("help")) {
      std::cout << "usage: " << usage << "\n\n" << desc << "\n";
      return false;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    fail(e.what(), "\nusage: ", usage, " (see --help)");
  }
  return true;
}

}  // namespace cw::cli
