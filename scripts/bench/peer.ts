// The benchmark's baseline peer, a process of its own (spawned by
// scripts/bench.ts with `node --import tsx`, as the services are):
//
//   - a raw grpc-js server with one unary method, /bench.Echo/Echo, with
//     pass-through (Buffer) serializers: the request's first 4 bytes (LE)
//     say how many bytes to answer with, so the bench sends and receives
//     exactly the message sizes of the uAPI call it stands beside;
//   - the same framework the services use (the kit's grpc-js server for
//     protobuf-es services) serving a stub Admin.GetTunables, to tell the
//     framework's cost from the host's own in the uAPI section;
//   - a NATS sink for the raw publish baseline: counts messages on
//     bench.sink.<run> and answers bench.sink.<run>.count with the count
//     (a request sent after the messages is answered after them: one
//     connection's messages arrive in order).
//
// Prints one JSON line {"ready":true,"grpcPort":N,"kitPort":M} on stdout once all listen.
// Exits on SIGTERM / SIGINT, or when its parent goes away (stdin closes).
import { Server, ServerCredentials, type ServerUnaryCall, type sendUnaryData } from "@grpc/grpc-js";
import { bind, createLogger, startGrpcServer } from "@iommufd/kit";
import { Admin } from "@iommufd/proto/iommufd";
import { connect } from "nats";

export const ECHO_PATH = "/bench.Echo/Echo";

const natsUrl = process.argv[2];
if (!natsUrl) {
  process.stderr.write("usage: peer.ts <nats-url>\n");
  process.exit(2);
}

const pass = (b: Buffer) => b;
const server = new Server({ "grpc.max_receive_message_length": 64 << 20, "grpc.max_send_message_length": 64 << 20 });
server.addService(
  {
    echo: {
      path: ECHO_PATH,
      requestStream: false,
      responseStream: false,
      requestSerialize: pass,
      requestDeserialize: pass,
      responseSerialize: pass,
      responseDeserialize: pass,
    },
  },
  {
    echo: (call: ServerUnaryCall<Buffer, Buffer>, cb: sendUnaryData<Buffer>) => {
      const n = call.request.length >= 4 ? call.request.readUInt32LE(0) : 0;
      cb(null, Buffer.alloc(n));
    },
  },
);
const port = await new Promise<number>((resolve, reject) =>
  server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
);

// The kit server logs like the services do (info; per-call records are debug).
const kit = await startGrpcServer({
  log: createLogger("bench-peer", "info"),
  services: [
    bind(Admin, {
      getTunables: () => ({
        tunables: { atcInvalidationTimeoutMs: 1000, memlockLimitBytes: 16n << 30n, defaultLeaseMs: 10_000, maxLeaseMs: 300_000, maxFdsPerSession: 1024 },
      }),
    }),
  ],
});

const nc = await connect({ servers: natsUrl, name: "bench-peer" });
const counts = new Map<string, number>();
nc.subscribe("bench.sink.*", {
  callback: (_err, m) => {
    const run = m.subject.slice("bench.sink.".length);
    counts.set(run, (counts.get(run) ?? 0) + 1);
  },
});
nc.subscribe("bench.sink.*.count", {
  callback: (_err, m) => {
    const run = m.subject.slice("bench.sink.".length, -".count".length);
    m.respond(new TextEncoder().encode(String(counts.get(run) ?? 0)));
  },
});
await nc.flush();

let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  server.forceShutdown();
  kit.server.forceShutdown();
  void nc.close().finally(() => process.exit(0));
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
process.stdin.on("end", stop);
process.stdin.resume();
process.stdout.write(`${JSON.stringify({ ready: true, grpcPort: port, kitPort: kit.port })}\n`);
