// store - the server's command line. See `store --help`.
#include <cstdio>
#include <string>

#include "server/log.h"
#include "server/options.h"
#include "server/server.h"
#include "storeclient.h"

int main(int argc, char** argv) {
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
