// A grpc-js server for protobuf-es services, with the standard health service
// and server reflection (so `buf curl` works with no code of ours). Every
// handler failure leaves here as an errno (wire-errors.ts).
import { randomUUID } from "node:crypto";
import { create, type DescFile, type DescService, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import {
  type Metadata,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
  type UntypedHandleCall,
} from "@grpc/grpc-js";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation, type ServingStatus } from "grpc-health-check";
import type { Logger } from "pino";
import { ErrnoError } from "../errno.js";
import { errnoToGrpcStatus, toErrnoError } from "../wire-errors.js";
import { methodPath, serviceDefinition } from "./codec.js";
import type { CallContext, ServiceImpl } from "./types.js";

export const CORRELATION_HEADER = "x-correlation-id";

export interface ServiceBinding<S extends DescService = DescService> {
  service: S;
  impl: Partial<ServiceImpl<S>>;
}

/** Pair a generated service with its implementation (keeps the impl type-checked). */
export function bind<S extends DescService>(service: S, impl: Partial<ServiceImpl<S>>): ServiceBinding {
  return { service, impl } as unknown as ServiceBinding;
}

export interface GrpcServerOptions {
  log: Logger;
  services: ServiceBinding[];
  host?: string;
  port?: number;
}

export interface RunningGrpcServer {
  readonly server: Server;
  readonly port: number;
  readonly address: string;
  setHealth(service: string, status: ServingStatus): void;
  shutdown(): Promise<void>;
}

/**
 * The per-call context. The logger, the abort signal and the peer are made on
 * first use: most calls use none of them, and grpc-js reports every finished
 * call as "cancelled", so an eager signal would be aborted after every call.
 */
class Call implements CallContext {
  #cid?: string;
  #log?: Logger;
  #ac?: AbortController;

  constructor(
    readonly path: string,
    private readonly call: ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>,
    private readonly parentLog: Logger,
  ) {}

  get metadata(): Metadata {
    return this.call.metadata;
  }

  get correlationId(): string {
    return (this.#cid ??= this.call.metadata.get(CORRELATION_HEADER)[0]?.toString() || randomUUID());
  }

  get log(): Logger {
    return (this.#log ??= this.parentLog.child({ rpc: this.path, cid: this.correlationId }));
  }

  get signal(): AbortSignal {
    if (!this.#ac) {
      const ac = (this.#ac = new AbortController());
      if (this.call.cancelled) ac.abort(new Error("cancelled"));
      else this.call.once("cancelled", () => ac.abort(new Error("cancelled")));
    }
    return this.#ac.signal;
  }

  get peer(): string {
    return this.call.getPeer();
  }
}

function unaryHandler(path: string, method: DescService["methods"][number], fn: Function, log: Logger): UntypedHandleCall {
  return async (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
    const ctx = new Call(path, call, log);
    try {
      const out = await fn(call.request, ctx);
      callback(null, create(method.output, out));
    } catch (e) {
      const err = toErrnoError(e);
      if (err.errno === "EIO" && !(e instanceof Error && e.name === "ErrnoError")) ctx.log.error({ err: e }, "handler crashed");
      else ctx.log.debug({ errno: err.errno, msg: err.message }, "rpc failed");
      callback(errnoToGrpcStatus(err, method.output));
    }
  };
}

function streamHandler(path: string, method: DescService["methods"][number], fn: Function, log: Logger): UntypedHandleCall {
  return async (call: ServerWritableStream<unknown, unknown>) => {
    const ctx = new Call(path, call, log);
    try {
      for await (const out of fn(call.request, ctx) as AsyncIterable<unknown>) {
        if (ctx.signal.aborted) break;
        call.write(create(method.output, out as never));
      }
      call.end();
    } catch (e) {
      const err = toErrnoError(e);
      ctx.log.debug({ errno: err.errno, msg: err.message }, "stream failed");
      call.emit("error", errnoToGrpcStatus(err));
    }
  };
}

/** Every file a service depends on, for reflection (transitively, each once). */
function filesOf(services: DescService[]): DescFile[] {
  const seen = new Map<string, DescFile>();
  const visit = (f: DescFile) => {
    if (seen.has(f.name)) return;
    seen.set(f.name, f);
    f.dependencies.forEach(visit);
  };
  for (const s of services) visit(s.file);
  return [...seen.values()];
}

export async function startGrpcServer(opts: GrpcServerOptions): Promise<RunningGrpcServer> {
  const server = new Server({ "grpc.max_receive_message_length": 64 << 20, "grpc.max_send_message_length": 64 << 20 });
  const health = new HealthImplementation({ "": "SERVING" });
  health.addToServer(server);
  const log = opts.log;
  for (const { service, impl } of opts.services) {
    const handlers: Record<string, UntypedHandleCall> = {};
    for (const m of service.methods) {
      const path = methodPath(service, m);
      // A method without a handler answers ENOTTY (UNIMPLEMENTED), like an ioctl the kernel does not have.
      const fn =
        (impl as Record<string, Function | undefined>)[m.localName] ??
        (() => {
          throw new ErrnoError("ENOTTY", `${path} is not implemented by this server`);
        });
      handlers[m.localName] = m.methodKind === "unary" ? unaryHandler(path, m, fn.bind(impl), log) : streamHandler(path, m, fn.bind(impl), log);
    }
    server.addService(serviceDefinition(service), handlers);
    health.setStatus(service.typeName, "SERVING");
  }
  // Reflection reads serialized FileDescriptorProtos, as @grpc/proto-loader would give it.
  const fileDescriptorProtos = filesOf(opts.services.map((b) => b.service)).map((f) =>
    Buffer.from(toBinary(FileDescriptorProtoSchema, f.proto)),
  );
  new ReflectionService({ all: { fileDescriptorProtos } } as never).addToServer(server);

  const host = opts.host ?? "127.0.0.1";
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${opts.port ?? 0}`, ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return {
    server,
    port,
    address: `${host}:${port}`,
    setHealth: (service, status) => health.setStatus(service, status),
    shutdown: () =>
      new Promise<void>((resolve) => {
        const force = setTimeout(() => server.forceShutdown(), 2000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}
