// The NATS plumbing against a real nats-server started on a free port.
import { PingSchema, PongSchema } from "@iommufd/proto/bus";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrnoError } from "../errno.js";
import { createLogger } from "../log.js";
import { Bus } from "./bus.js";
import { type NatsServerProcess, startNatsServer } from "./server.js";

let nats: NatsServerProcess;
let a: Bus;
let b: Bus;

beforeAll(async () => {
  nats = await startNatsServer();
  const log = createLogger("test", "silent");
  a = await Bus.connect({ url: nats.url, name: "a", log });
  b = await Bus.connect({ url: nats.url, name: "b", log });
});

afterAll(async () => {
  await a?.close();
  await b?.close();
  await nats?.stop();
});

describe("Bus", () => {
  it("does typed request/reply with correlation ids", async () => {
    let cid = "";
    const sub = b.serve("t.echo", PingSchema, PongSchema, (req, ctx) => {
      cid = ctx.correlationId;
      return { seq: req.seq, payload: req.payload, process: "b" };
    });
    await b.flush();
    const pong = await a.request("t.echo", PingSchema, { seq: 7n, payload: new Uint8Array([1, 2, 3]) }, PongSchema, { correlationId: "c-1" });
    expect(pong.seq).toBe(7n);
    expect([...pong.payload]).toEqual([1, 2, 3]);
    expect(pong.process).toBe("b");
    expect(cid).toBe("c-1");
    sub.unsubscribe();
  });

  it("returns a handler's errno to the requester", async () => {
    const sub = b.serve("t.fail", PingSchema, PongSchema, () => {
      throw new ErrnoError("EFAULT", "bad address");
    });
    await b.flush();
    const e = (await a.request("t.fail", PingSchema, {}, PongSchema).catch((x: unknown) => x)) as ErrnoError;
    expect(e).toBeInstanceOf(ErrnoError);
    expect(e.errno).toBe("EFAULT");
    expect(e.message).toBe("bad address");
    sub.unsubscribe();
  });

  it("reports no responder as ENOTCONN and a silent responder as ETIMEDOUT", async () => {
    const e1 = (await a.request("t.nobody", PingSchema, {}, PongSchema).catch((x: unknown) => x)) as ErrnoError;
    expect(e1.errno).toBe("ENOTCONN");
    const sub = b.nc.subscribe("t.silent");
    await b.flush();
    const e2 = (await a.request("t.silent", PingSchema, {}, PongSchema, { timeoutMs: 100 }).catch((x: unknown) => x)) as ErrnoError;
    expect(e2.errno).toBe("ETIMEDOUT");
    sub.unsubscribe();
  });

  it("delivers published messages to wildcard subscribers in order", async () => {
    const got: bigint[] = [];
    const done = new Promise<void>((resolve) => {
      b.subscribe("t.stream.>", PingSchema, (m) => {
        got.push(m.seq);
        if (got.length === 100) resolve();
      });
    });
    await b.flush();
    for (let i = 0; i < 100; i++) a.publish(`t.stream.x${i % 3}`, PingSchema, { seq: BigInt(i) });
    await done;
    expect(got).toEqual(Array.from({ length: 100 }, (_, i) => BigInt(i)));
  });
});
