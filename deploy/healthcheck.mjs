// Container healthcheck for deploy/compose.yaml (plain Node, no build step):
//   node deploy/healthcheck.mjs grpc <host:port>   grpc.health.v1 Check("") is SERVING
//   node deploy/healthcheck.mjs nats <host:port>   nats-server answers with its INFO banner
// Exit 0 when healthy, 1 otherwise (with the reason on stderr).
import { connect } from "node:net";
import { credentials, makeGenericClientConstructor } from "@grpc/grpc-js";
import healthCheck from "grpc-health-check";

const [mode, address] = process.argv.slice(2);
const fail = (why) => {
  process.stderr.write(`unhealthy: ${why}\n`);
  process.exit(1);
};
if (!address || !["grpc", "nats"].includes(mode)) fail("usage: healthcheck.mjs grpc|nats <host:port>");
setTimeout(() => fail(`no answer from ${address} in 2 s`), 2000).unref();

if (mode === "grpc") {
  const Health = makeGenericClientConstructor(healthCheck.service, "grpc.health.v1.Health");
  const client = new Health(address, credentials.createInsecure());
  client.check({ service: "" }, { deadline: Date.now() + 1500 }, (err, res) => {
    client.close();
    if (err) fail(err.message);
    if (res?.status !== "SERVING") fail(`status ${res?.status}`);
    process.exit(0);
  });
} else {
  const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))];
  const sock = connect({ host, port });
  let seen = "";
  sock.on("data", (d) => {
    seen += d.toString();
    if (seen.startsWith("INFO ")) {
      sock.destroy();
      process.exit(0);
    }
  });
  sock.on("error", (e) => fail(e.message));
}
