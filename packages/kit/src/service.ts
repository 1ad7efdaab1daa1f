// The shape of every service process: parse and validate configuration, log
// with pino, connect to NATS, serve gRPC (health + reflection + the service's
// own), answer pings and fault-injection rules on its control subjects, and
// shut down cleanly on SIGTERM or SIGINT. The "ready" log line carries the
// gRPC port for launchers.

import { FaultControlReplySchema, FaultControlRequestSchema, PingSchema, PongSchema } from "@iommufd/proto/bus";
import { Command } from "commander";
import type { Subscription } from "nats";
import type { z } from "zod";
import { type CommonConfig, commonConfigSchema, commonOptions, validate } from "./config.js";
import { type RunningGrpcServer, type ServiceBinding, startGrpcServer } from "./grpc/server.js";
import { createLogger, type Logger } from "./log.js";
import { Bus } from "./nats/bus.js";
import { subjects } from "./subjects.js";

export interface ServiceEnv<C> {
  config: CommonConfig & C;
  log: Logger;
  bus: Bus;
}

export interface StartedService {
  /** gRPC services to serve besides health and reflection. */
  services: ServiceBinding[];
  /** Called once gRPC is listening. */
  ready?(grpc: RunningGrpcServer): void | Promise<void>;
  /** Release everything (called before the bus and gRPC close). */
  stop?(): Promise<void>;
}

export interface ServiceSpec<S extends z.ZodRawShape> {
  /** Default process name. */
  name: string;
  description: string;
  defaultGrpcPort: number;
  /** Extra flags for this service. */
  options?(cmd: Command): Command;
  /** Validation of those extra flags (merged with the common schema). */
  schema?: z.ZodObject<S>;
  start(env: ServiceEnv<z.infer<z.ZodObject<S>>>): Promise<StartedService>;
}

export interface RunningService {
  grpc: RunningGrpcServer;
  bus: Bus;
  log: Logger;
  stop(): Promise<void>;
}

export async function runService<S extends z.ZodRawShape>(spec: ServiceSpec<S>, argv = process.argv): Promise<RunningService> {
  const cmd = commonOptions(new Command(spec.name).description(spec.description), { name: spec.name, grpcPort: spec.defaultGrpcPort });
  spec.options?.(cmd);
  cmd.parse(argv);
  const schema = spec.schema ? commonConfigSchema.extend(spec.schema.shape) : commonConfigSchema;
  const config = validate(schema, cmd.opts(), cmd) as CommonConfig & z.infer<z.ZodObject<S>>;

  const log = createLogger(config.name, config.logLevel);
  let bus: Bus;
  try {
    bus = await Bus.connect({ url: config.natsUrl, name: config.name, log });
  } catch (e) {
    log.fatal({ err: e, natsUrl: config.natsUrl }, "cannot connect to NATS");
    process.exit(1);
  }
  const started = await spec.start({ config, log, bus });
  const grpc = await startGrpcServer({ log, services: started.services, host: config.grpcHost, port: config.grpcPort });
  const ping: Subscription = bus.serve(subjects.ping(config.name), PingSchema, PongSchema, (req) => ({
    seq: req.seq,
    payload: req.responseSize > 0 ? new Uint8Array(req.responseSize) : req.payload,
    process: config.name,
    sentUnixNanos: req.sentUnixNanos,
    repliedUnixNanos: BigInt(Date.now()) * 1_000_000n,
  }));
  // Message fault rules (nats/faults.ts): applied by this process's Bus to everything it sends and receives.
  const faults: Subscription = bus.serve(subjects.faults(config.name), FaultControlRequestSchema, FaultControlReplySchema, (req) => {
    const reply = bus.faults.handle(req, config.name);
    if (req.request.case !== "list") log.info({ op: req.request.case, rules: bus.faults.list().map((r) => r.id) }, "fault rules changed");
    return reply;
  });
  await started.ready?.(grpc);
  await bus.flush();
  log.info({ grpcPort: grpc.port, grpcAddress: grpc.address, natsUrl: config.natsUrl }, "ready");

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      log.info("shutting down");
      ping.unsubscribe();
      faults.unsubscribe();
      await started.stop?.().catch((e) => log.error({ err: e }, "stop failed"));
      await grpc.shutdown();
      await bus.close();
      log.info("stopped");
    })());
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    process.once(sig, () => {
      void stop().then(() => process.exit(0));
    });
  }
  return { grpc, bus, log, stop };
}
