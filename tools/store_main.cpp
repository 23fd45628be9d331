// store - the server's command line. See `store --help`.
#include <cstdio>
#include <string>

#include "report.h"
#include "server/log.h"
#include "server/options.h"
#include "server/server.h"
#include "storeclient.h"

namespace {

// store info [--socket PATH]: a one-shot report of a running store.
int InfoCommand(int argc, char** argv) {
  const char* socket = nullptr;
  for (int i = 2; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--socket" && i + 1 < argc) {
      socket = argv[++i];
    } else if (a.rfind("--socket=", 0) == 0) {
      socket = argv[i] + 9;
    } else if (a == "--help" || a == "-h") {
      std::printf("Usage: store info [--socket PATH]\n"
                  "Prints a running store's figures in sections of key:value lines.\n");
      return 0;
    } else {
      std::fprintf(stderr, "store info: unknown option '%s' (see store info --help)\n", argv[i]);
      return 2;
    }
  }
  return store::report::PrintInfo(socket, stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "info") return InfoCommand(argc, argv);
  store::ServerOptions options;
  std::string error;
  if (!store::ParseOptions(argc, argv, &options, &error)) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  if (options.help) {
    std::fputs(store::HelpText(), stdout);
    return 0;
  }
  if (options.version) {
    std::printf("store %s\n", STORE_VERSION_STRING);
    return 0;
  }
  store::SetLogLevel(options.log_level);
  store::Server server(options);
  return server.Run();
}
