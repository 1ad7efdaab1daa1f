// Typed NATS for protobuf-es messages: publish, subscribe, request/reply and
// serve, with correlation ids in headers and errno error replies
// (wire-errors.ts). Reconnects forever; status changes are logged.
import { randomUUID } from "node:crypto";
import { create, type DescMessage, fromBinary, type MessageInitShape, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { connect, type Msg, type MsgHdrs, type NatsConnection, headers as natsHeaders, type Subscription } from "nats";
import type { Logger } from "pino";
import { ErrnoError } from "../errno.js";
import { errnoToHeaders, headersToErrno, toErrnoError } from "../wire-errors.js";

export const CORRELATION_HEADER = "x-correlation-id";

export interface BusOptions {
  url: string;
  /** Connection name shown by nats-server (the process name). */
  name: string;
  log: Logger;
}

export interface MsgContext {
  readonly subject: string;
  readonly correlationId: string;
  readonly headers?: MsgHdrs;
}

export interface SendOptions {
  correlationId?: string;
  headers?: Record<string, string>;
}

export interface RequestOptions extends SendOptions {
  timeoutMs?: number;
}

function hdrs(opts?: SendOptions): MsgHdrs {
  const h = natsHeaders();
  h.set(CORRELATION_HEADER, opts?.correlationId ?? randomUUID());
  for (const [k, v] of Object.entries(opts?.headers ?? {})) h.set(k, v);
  return h;
}

function decode<S extends DescMessage>(schema: S, data: Uint8Array): MessageShape<S> {
  return fromBinary(schema, data);
}

function ctxOf(m: Msg): MsgContext {
  return { subject: m.subject, correlationId: m.headers?.get(CORRELATION_HEADER) || "", headers: m.headers };
}

export class Bus {
  private constructor(
    readonly nc: NatsConnection,
    private readonly log: Logger,
  ) {}

  static async connect(opts: BusOptions): Promise<Bus> {
    const nc = await connect({
      servers: opts.url,
      name: opts.name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      pingInterval: 10_000,
    });
    const bus = new Bus(nc, opts.log.child({ component: "bus" }));
    void bus.watchStatus();
    return bus;
  }

  private async watchStatus(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (s.type === "pingTimer") continue;
      this.log.info({ type: s.type, data: String(s.data) }, "nats status");
    }
  }

  publish<S extends DescMessage>(subject: string, schema: S, msg: MessageInitShape<S>, opts?: SendOptions): void {
    this.nc.publish(subject, toBinary(schema, create(schema, msg)), { headers: hdrs(opts) });
  }

  /** Request/reply; an errno reply rejects with ErrnoError, no responder with ENOTCONN, timeout with ETIMEDOUT. */
  async request<I extends DescMessage, O extends DescMessage>(
    subject: string,
    inSchema: I,
    msg: MessageInitShape<I>,
    outSchema: O,
    opts?: RequestOptions,
  ): Promise<MessageShape<O>> {
    let reply: Msg;
    try {
      reply = await this.nc.request(subject, toBinary(inSchema, create(inSchema, msg)), {
        timeout: opts?.timeoutMs ?? 5_000,
        headers: hdrs(opts),
      });
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === "503") throw new ErrnoError("ENOTCONN", `no responder on ${subject}`, { cause: e });
      if (code === "TIMEOUT") throw new ErrnoError("ETIMEDOUT", `request on ${subject} timed out`, { cause: e });
      throw toErrnoError(e);
    }
    const err = reply.headers ? headersToErrno((k) => reply.headers?.get(k)) : undefined;
    if (err) throw err;
    return decode(outSchema, reply.data);
  }

  /** Answer requests on `subject`; thrown ErrnoErrors go back as errno replies. */
  serve<I extends DescMessage, O extends DescMessage>(
    subject: string,
    inSchema: I,
    outSchema: O,
    handler: (req: MessageShape<I>, ctx: MsgContext) => Promise<MessageInitShape<O>> | MessageInitShape<O>,
    opts?: { queue?: string },
  ): Subscription {
    return this.nc.subscribe(subject, {
      queue: opts?.queue,
      callback: (err, m) => {
        if (err) {
          this.log.error({ err, subject }, "subscription error");
          return;
        }
        void (async () => {
          const ctx = ctxOf(m);
          const h = natsHeaders();
          h.set(CORRELATION_HEADER, ctx.correlationId);
          try {
            const out = await handler(decode(inSchema, m.data), ctx);
            m.respond(toBinary(outSchema, create(outSchema, out)), { headers: h });
          } catch (e) {
            const er = toErrnoError(e);
            if (!(e instanceof ErrnoError)) this.log.error({ err: e, subject }, "handler crashed");
            for (const [k, v] of Object.entries(errnoToHeaders(er))) h.set(k, v);
            m.respond(new Uint8Array(0), { headers: h });
          }
        })();
      },
    });
  }

  /** Deliver every message on `subject` (wildcards allowed) to `handler`; bad payloads are logged, not fatal. */
  subscribe<S extends DescMessage>(
    subject: string,
    schema: S,
    handler: (msg: MessageShape<S>, ctx: MsgContext) => void | Promise<void>,
    opts?: { queue?: string },
  ): Subscription {
    return this.nc.subscribe(subject, {
      queue: opts?.queue,
      callback: (err, m) => {
        if (err) {
          this.log.error({ err, subject }, "subscription error");
          return;
        }
        let msg: MessageShape<S>;
        try {
          msg = decode(schema, m.data);
        } catch (e) {
          this.log.warn({ err: e, subject: m.subject }, "undecodable message dropped");
          return;
        }
        Promise.resolve(handler(msg, ctxOf(m))).catch((e) => this.log.error({ err: e, subject: m.subject }, "handler failed"));
      },
    });
  }

  flush(): Promise<void> {
    return this.nc.flush();
  }

  async close(): Promise<void> {
    if (this.nc.isClosed()) return;
    await this.nc.drain().catch(() => this.nc.close());
  }
}
