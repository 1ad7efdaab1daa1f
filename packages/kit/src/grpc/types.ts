// Typing of protobuf-es v2 service descriptors for handlers and clients.
import type { DescMessage, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { GenService } from "@bufbuild/protobuf/codegenv2";
import type { Metadata } from "@grpc/grpc-js";
import type { Logger } from "pino";

type MethodsOf<S> = S extends GenService<infer M> ? M : never;

/** What every handler gets besides its request. */
export interface CallContext {
  /** `/<package.Service>/<Method>` */
  readonly path: string;
  readonly metadata: Metadata;
  readonly correlationId: string;
  readonly log: Logger;
  /** Aborted when the client cancels or the deadline passes. */
  readonly signal: AbortSignal;
  readonly peer: string;
}

export type UnaryHandler<I extends DescMessage, O extends DescMessage> = (
  req: MessageShape<I>,
  ctx: CallContext,
) => Promise<MessageInitShape<O>> | MessageInitShape<O>;

export type ServerStreamHandler<I extends DescMessage, O extends DescMessage> = (
  req: MessageShape<I>,
  ctx: CallContext,
) => AsyncIterable<MessageInitShape<O>>;

/** The implementation of a generated service: one handler per method, keyed by localName. */
export type ServiceImpl<S extends DescService> = {
  [K in keyof MethodsOf<S>]: MethodsOf<S>[K] extends {
    methodKind: "unary";
    input: infer I extends DescMessage;
    output: infer O extends DescMessage;
  }
    ? UnaryHandler<I, O>
    : MethodsOf<S>[K] extends {
          methodKind: "server_streaming";
          input: infer I extends DescMessage;
          output: infer O extends DescMessage;
        }
      ? ServerStreamHandler<I, O>
      : never;
};

export interface CallOptions {
  /** Per-call deadline; defaults to the client's. */
  deadlineMs?: number;
  /** Extra metadata (the session token, say). */
  metadata?: Record<string, string>;
  signal?: AbortSignal;
}

/** A typed client: one promise-returning function per unary method, an async iterable per server stream. */
export type ServiceClient<S extends DescService> = {
  [K in keyof MethodsOf<S>]: MethodsOf<S>[K] extends {
    methodKind: "unary";
    input: infer I extends DescMessage;
    output: infer O extends DescMessage;
  }
    ? (req: MessageInitShape<I>, opts?: CallOptions) => Promise<MessageShape<O>>
    : MethodsOf<S>[K] extends {
          methodKind: "server_streaming";
          input: infer I extends DescMessage;
          output: infer O extends DescMessage;
        }
      ? (req: MessageInitShape<I>, opts?: CallOptions) => AsyncIterable<MessageShape<O>>
      : never;
};
