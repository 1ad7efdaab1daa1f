// Typed NATS for protobuf-es messages: publish, subscribe, request/reply and
// serve, with correlation ids in headers and errno error replies
// (wire-errors.ts). Reconnects forever; status changes are logged.
//
// Fault injection (faults.ts) happens here, at the four points where a
// message leaves or enters the process: publish and request (out), the
// reply a request receives (in, rules with `replies`), a served request
// (in) and its reply (out, rules with `replies`), and a subscription's
// delivery (in). With no rules in force each point costs one length check.
import { randomUUID } from "node:crypto";
import { create, type DescMessage, fromBinary, type MessageInitShape, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { connect, createInbox, type Msg, type MsgHdrs, type NatsConnection, headers as natsHeaders, type Subscription } from "nats";
import type { Logger } from "pino";
import { ErrnoError } from "../errno.js";
import { errnoToHeaders, headersToErrno, toErrnoError } from "../wire-errors.js";
import { applyFlips, type Direction, type FaultEffect, FaultInjector } from "./faults.js";

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
  // nats hands out Buffers; decoding a Buffer gives Buffer-typed bytes fields, so view it as a plain Uint8Array.
  return fromBinary(schema, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}

function ctxOf(m: Msg): MsgContext {
  return { subject: m.subject, correlationId: m.headers?.get(CORRELATION_HEADER) || "", headers: m.headers };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const timedOut = (subject: string) => new ErrnoError("ETIMEDOUT", `request on ${subject} timed out`);

export class Bus {
  /** This process's message fault rules (served on iommu.v1.ctl.<name>.faults by runService). */
  readonly faults = new FaultInjector();

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

  /** Log an injected fault (debug: the rule hit counts are the record). */
  private traced(eff: FaultEffect, subject: string, dir: Direction, what: string): FaultEffect {
    this.log.debug({ subject, dir, what, rules: eff.rules, drop: eff.drop, delayMs: eff.delayMs, duplicates: eff.duplicates, flips: eff.flips.length }, "fault injected");
    return eff;
  }

  /** Carry out a fault effect on one send or delivery: drop, delay, corrupt, duplicate. */
  private carryOut(eff: FaultEffect, data: Uint8Array, send: (bytes: Uint8Array) => void): void {
    if (eff.drop) return;
    const bytes = applyFlips(data, eff);
    const run = () => {
      try {
        for (let i = 0; i <= eff.duplicates; i++) send(bytes);
      } catch (e) {
        this.log.debug({ err: e }, "faulted message not sent");
      }
    };
    if (eff.delayMs > 0) setTimeout(run, eff.delayMs);
    else run();
  }

  publish<S extends DescMessage>(subject: string, schema: S, msg: MessageInitShape<S>, opts?: SendOptions): void {
    const data = toBinary(schema, create(schema, msg));
    const eff = this.faults.decide(subject, "out", false, data.length);
    if (!eff) {
      this.nc.publish(subject, data, { headers: hdrs(opts) });
      return;
    }
    const h = hdrs(opts);
    this.carryOut(this.traced(eff, subject, "out", "publish"), data, (b) => this.nc.publish(subject, b, { headers: h }));
  }

  /** Request/reply; an errno reply rejects with ErrnoError, no responder with ENOTCONN, timeout with ETIMEDOUT. */
  async request<I extends DescMessage, O extends DescMessage>(
    subject: string,
    inSchema: I,
    msg: MessageInitShape<I>,
    outSchema: O,
    opts?: RequestOptions,
  ): Promise<MessageShape<O>> {
    const timeout = opts?.timeoutMs ?? 5_000;
    const headers = hdrs(opts);
    let data: Uint8Array = toBinary(inSchema, create(inSchema, msg));
    const start = Date.now();
    const left = () => timeout - (Date.now() - start);
    // Outbound faults on the request: a dropped request is a silent responder.
    const out = this.faults.decide(subject, "out", false, data.length);
    if (out) {
      this.traced(out, subject, "out", "request");
      if (out.drop || out.delayMs >= timeout) {
        await sleep(timeout);
        throw timedOut(subject);
      }
      if (out.delayMs > 0) await sleep(out.delayMs);
      data = applyFlips(data, out);
    }
    let reply: Msg;
    try {
      const pending = this.nc.request(subject, data, { timeout: Math.max(1, left()), headers });
      // A duplicated request reaches the responder again; its second reply goes to an inbox nobody reads.
      for (let i = 0; i < (out?.duplicates ?? 0); i++) this.nc.publish(subject, data, { headers, reply: createInbox() });
      reply = await pending;
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === "503") throw new ErrnoError("ENOTCONN", `no responder on ${subject}`, { cause: e });
      if (code === "TIMEOUT") throw new ErrnoError("ETIMEDOUT", `request on ${subject} timed out`, { cause: e });
      throw toErrnoError(e);
    }
    // Inbound faults on the reply (rules with `replies`): a dropped reply is a timeout too.
    let replyData = reply.data;
    const inn = this.faults.decide(subject, "in", true, replyData.length);
    if (inn) {
      this.traced(inn, subject, "in", "reply");
      if (inn.drop || inn.delayMs >= left()) {
        await sleep(Math.max(0, left()));
        throw timedOut(subject);
      }
      if (inn.delayMs > 0) await sleep(inn.delayMs);
      replyData = applyFlips(replyData, inn);
    }
    const err = reply.headers ? headersToErrno((k) => reply.headers?.get(k)) : undefined;
    if (err) throw err;
    try {
      return decode(outSchema, replyData);
    } catch (e) {
      throw new ErrnoError("EIO", `undecodable reply on ${subject}: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Answer requests on `subject`; thrown ErrnoErrors go back as errno replies. */
  serve<I extends DescMessage, O extends DescMessage>(
    subject: string,
    inSchema: I,
    outSchema: O,
    handler: (req: MessageShape<I>, ctx: MsgContext) => Promise<MessageInitShape<O>> | MessageInitShape<O>,
    opts?: { queue?: string },
  ): Subscription {
    const answer = async (m: Msg, data: Uint8Array) => {
      const ctx = ctxOf(m);
      const h = natsHeaders();
      h.set(CORRELATION_HEADER, ctx.correlationId);
      let body: Uint8Array;
      try {
        const out = await handler(decode(inSchema, data), ctx);
        body = toBinary(outSchema, create(outSchema, out));
      } catch (e) {
        const er = toErrnoError(e);
        if (!(e instanceof ErrnoError)) this.log.error({ err: e, subject }, "handler crashed");
        for (const [k, v] of Object.entries(errnoToHeaders(er))) h.set(k, v);
        body = new Uint8Array(0);
      }
      // Outbound faults on the reply (rules with `replies`, matched on the request's subject).
      const eff = this.faults.decide(m.subject, "out", true, body.length);
      if (!eff) m.respond(body, { headers: h });
      else this.carryOut(this.traced(eff, m.subject, "out", "reply"), body, (b) => m.respond(b, { headers: h }));
    };
    return this.nc.subscribe(subject, {
      queue: opts?.queue,
      callback: (err, m) => {
        if (err) {
          this.log.error({ err, subject }, "subscription error");
          return;
        }
        // Inbound faults on the request: a dropped request is never answered.
        const eff = this.faults.decide(m.subject, "in", false, m.data.length);
        if (!eff) void answer(m, m.data);
        else this.carryOut(this.traced(eff, m.subject, "in", "request"), m.data, (b) => void answer(m, b));
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
    const deliver = (m: Msg, data: Uint8Array) => {
      let msg: MessageShape<S>;
      try {
        msg = decode(schema, data);
      } catch (e) {
        this.log.warn({ err: e, subject: m.subject }, "undecodable message dropped");
        return;
      }
      Promise.resolve(handler(msg, ctxOf(m))).catch((e) => this.log.error({ err: e, subject: m.subject }, "handler failed"));
    };
    return this.nc.subscribe(subject, {
      queue: opts?.queue,
      callback: (err, m) => {
        if (err) {
          this.log.error({ err, subject }, "subscription error");
          return;
        }
        const eff = this.faults.decide(m.subject, "in", false, m.data.length);
        if (!eff) deliver(m, m.data);
        else this.carryOut(this.traced(eff, m.subject, "in", "delivery"), m.data, (b) => deliver(m, b));
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
