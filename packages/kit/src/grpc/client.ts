// Typed grpc-js client for a protobuf-es service: promise per unary method,
// async iterable per server stream; failures arrive as ErrnoError with the
// server's errno (and the response message where the RPC writes one back).
import { randomUUID } from "node:crypto";
import { create, type DescService } from "@bufbuild/protobuf";
import { Client, type ClientReadableStream, credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { grpcErrorToErrno } from "../wire-errors.js";
import { deserializer, methodPath, serializer } from "./codec.js";
import { CORRELATION_HEADER } from "./server.js";
import type { CallOptions, ServiceClient } from "./types.js";

export interface ClientOptions {
  /** Default deadline per call (ms). */
  deadlineMs?: number;
  /** Metadata added to every call (e.g. the session token); a function is read per call. */
  metadata?: Record<string, string> | (() => Record<string, string>);
}

export interface GrpcClient<S extends DescService> {
  readonly rpc: ServiceClient<S>;
  readonly channel: Client;
  close(): void;
}

export function createClient<S extends DescService>(service: S, address: string, opts: ClientOptions = {}): GrpcClient<S> {
  const channel = new Client(address, credentials.createInsecure(), {
    "grpc.max_receive_message_length": 64 << 20,
    "grpc.max_send_message_length": 64 << 20,
  });
  const defaults = opts.deadlineMs ?? 15_000;
  const metadataFor = (o?: CallOptions) => {
    const md = new Metadata();
    const base = typeof opts.metadata === "function" ? opts.metadata() : (opts.metadata ?? {});
    for (const [k, v] of Object.entries({ ...base, ...o?.metadata })) md.set(k, v);
    if (md.get(CORRELATION_HEADER).length === 0) md.set(CORRELATION_HEADER, randomUUID());
    return md;
  };
  const rpc: Record<string, unknown> = {};
  for (const m of service.methods) {
    const path = methodPath(service, m);
    const ser = serializer(m.input);
    const de = deserializer(m.output);
    if (m.methodKind === "unary") {
      rpc[m.localName] = (req: unknown, o?: CallOptions) =>
        new Promise((resolve, reject) => {
          const call = channel.makeUnaryRequest(
            path,
            ser,
            de,
            create(m.input, req as never),
            metadataFor(o),
            { deadline: Date.now() + (o?.deadlineMs ?? defaults) },
            (err: ServiceError | null, res?: unknown) => (err ? reject(grpcErrorToErrno(err, m.output)) : resolve(res)),
          );
          o?.signal?.addEventListener("abort", () => call.cancel(), { once: true });
        });
    } else if (m.methodKind === "server_streaming") {
      rpc[m.localName] = (req: unknown, o?: CallOptions) => ({
        async *[Symbol.asyncIterator]() {
          const stream: ClientReadableStream<unknown> = channel.makeServerStreamRequest(
            path,
            ser,
            de,
            create(m.input, req as never),
            metadataFor(o),
            o?.deadlineMs ? { deadline: Date.now() + o.deadlineMs } : {},
          );
          o?.signal?.addEventListener("abort", () => stream.cancel(), { once: true });
          try {
            for await (const msg of stream) yield msg;
          } catch (e) {
            if ((e as ServiceError).code === 1 && o?.signal?.aborted) return;
            throw grpcErrorToErrno(e as ServiceError, m.output);
          }
        },
      });
    }
  }
  return { rpc: rpc as ServiceClient<S>, channel, close: () => channel.close() };
}
