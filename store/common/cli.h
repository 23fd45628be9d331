// cli.h - the command lines of store, its commands, store-top and store-bench: parsed by CLI11,
// every failure reported as one line in the program's own words.
//
// Each program declares its options on a CLI::App set up by Configure(). A value option's
// callback runs as the option is met on the command line (Value()), so options given twice act
// in the order given, the last one winning, and the first bad value is the one reported; the
// callback rejects a value with Reject(message), which becomes the failure's line as it is.
// CLI11 generates neither help nor messages here: each program prints its own help text, and
// Parse() returns what went wrong (a value missing, a value given to a flag, a rejected value)
// for the program to word. A flag takes no value (--once=yes is a failure), and --option=
// gives the option an empty value. Arguments CLI11 does not know (unknown options, positionals,
// and a "--" separator) are left in app.remaining(), in order, for the program to judge.
//
// Owns: nothing; helpers over a CLI::App that the caller owns.
// Called by: server/options.cpp (the server's flags), tools/store_main.cpp (the commands),
// tools/store_top.cpp and tools/store_bench.cpp.
// Threads: any; an App and its callbacks are used by the thread that parses.
#pragma once

#include <CLI/CLI.hpp>

#include <algorithm>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace store::cli {

// Sets up app: no generated --help flag, and unknown arguments kept for the caller.
inline void Configure(CLI::App& app) {
  app.set_help_flag();
  app.allow_extras();
}

// An option that takes one value (--name VALUE or --name=VALUE). fn runs as the option is
// parsed; it may call Reject().
inline CLI::Option* Value(CLI::App& app, const std::string& names,
                          std::function<void(const std::string&)> fn) {
  return app.add_option_function<std::string>(names, std::move(fn))->trigger_on_parse();
}

// A flag. fn runs as the flag is parsed.
inline CLI::Option* Flag(CLI::App& app, const std::string& names, std::function<void()> fn) {
  return app.add_flag_callback(names, std::move(fn))->trigger_on_parse();
}

// Called from an option's callback: the parse fails with message as its line.
[[noreturn]] inline void Reject(const std::string& message) {
  throw CLI::ValidationError(message);
}

struct Failure {
  enum class Kind {
    kNeedsValue,    // the last argument was an option that takes a value
    kTakesNoValue,  // a flag was given a value (--flag=VALUE)
    kOther,         // a value was rejected (message is the Reject() text), or anything else
  };
  Kind kind = Kind::kOther;
  std::string option;   // kNeedsValue, kTakesNoValue: the option, e.g. "--memory"
  std::string message;  // kOther: one line, without a newline
};

// Parses argv (argv[0] is the program and is skipped). Returns false with *failure filled if
// the command line is bad.
inline bool Parse(CLI::App& app, int argc, char** argv, Failure* failure) {
  *failure = Failure{};
  // CLI11 reads "--flag=VALUE" as a value for the flag ("--once=false" clears it), and
  // "--option=" as "--option" followed by the next argument as its value. Here a flag takes no
  // value, and "--option=" gives the option an empty value (which its callback judges).
  std::vector<std::string> args;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    const size_t eq = a.find('=');
    if (a == "--") {  // what follows is positional
      args.insert(args.end(), argv + i, argv + argc);
      break;
    }
    if (a.rfind("--", 0) == 0 && eq == std::string::npos && i + 1 < argc) {
      // An option that takes a value takes the next argument, whatever it looks like.
      const CLI::Option* opt = app.get_option_no_throw(a);
      if (opt && opt->get_items_expected_max() > 0) {
        args.push_back(std::move(a));
        args.emplace_back(argv[++i]);
        continue;
      }
    }
    if (a.rfind("--", 0) == 0 && eq != std::string::npos) {
      const std::string name = a.substr(0, eq);
      if (const CLI::Option* opt = app.get_option_no_throw(name)) {
        if (opt->get_items_expected_max() == 0) {
          failure->kind = Failure::Kind::kTakesNoValue;
          failure->option = name;
          return false;
        }
        if (eq + 1 == a.size()) {
          args.push_back(name);
          args.emplace_back();
          continue;
        }
      }
    }
    args.push_back(std::move(a));
  }
  std::reverse(args.begin(), args.end());  // App::parse takes them last first
  try {
    app.parse(args);
    return true;
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    // CLI11's message when the last argument is an option that takes a value (CLI/Error.hpp,
    // ArgumentMismatch::TypedAtLeast): "--memory: 1 required TEXT missing".
    const std::string missing = " missing";
    const size_t colon = what.find(':');
    if (dynamic_cast<const CLI::ArgumentMismatch*>(&e) != nullptr &&
        colon != std::string::npos && what.size() > missing.size() &&
        what.compare(what.size() - missing.size(), missing.size(), missing) == 0) {
      failure->kind = Failure::Kind::kNeedsValue;
      failure->option = what.substr(0, colon);
      return false;
    }
    for (char& c : what) {
      if (c == '\n' || c == '\r') c = ' ';
    }
    failure->message = what;
    return false;
  }
}

}  // namespace store::cli
