// Runs configurable-http-proxy (the npm package's own ConfigurableProxy, as its command line does) for
// the tests, on ports the kernel picks: the command line reads `--port 0` as 8000, and a port chosen
// before start-up could be taken meanwhile.
//
// usage: node chp.js PACKAGE_DIR RECORD_FILE   (CONFIGPROXY_AUTH_TOKEN in the environment, as for the CLI)
// RECORD_FILE gets one JSON line {"proxy": port, "api": port} once both listen, then one JSON line per
// request the proxy receives ({"method", "url"}), written synchronously in arrival order: the tests
// count requests with it. The proxy's own log goes to stdout as usual.
"use strict";

const fs = require("fs");
const path = require("path");
const { ConfigurableProxy } = require(path.join(process.argv[2], "lib", "configproxy.js"));

const record = process.argv[3];
const proxy = new ConfigurableProxy({ authToken: process.env.CONFIGPROXY_AUTH_TOKEN });
proxy.proxyServer.on("request", (req) => {
  fs.appendFileSync(record, JSON.stringify({ method: req.method, url: req.url }) + "\n");
});

const ports = {};
for (const [name, server] of [["proxy", proxy.proxyServer], ["api", proxy.apiServer]]) {
  server.listen(0, "127.0.0.1", () => {
    ports[name] = server.address().port;
    if (ports.proxy && ports.api) {
      fs.appendFileSync(record, JSON.stringify(ports) + "\n");
    }
  });
}
process.on("SIGTERM", () => process.exit(0));
