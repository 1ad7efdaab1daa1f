// Cross-process: message fault injection in the bus layer (DESIGN §8,
// proto/bus/v1/faults.proto). Rules are set over iommu.v1.ctl.<name>.faults
// on a real service process and applied to what it receives and sends;
// between two Bus instances, publish/subscribe faults are counted exactly.
import { Bus, clearFaultRules, createLogger, ErrnoError, listFaultRules, setFaultRules, subjects } from "@iommufd/kit";
import { FaultAction, FaultDirection, PingSchema, PongSchema } from "@iommufd/proto/bus";
import { TestTopology } from "@iommufd/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

let topo: TestTopology;
let a: Bus;
let b: Bus;
const PROC = "dev1";

const ping = (bus: Bus, timeoutMs = 2000, payload = new Uint8Array(0)) =>
  bus.request(subjects.ping(PROC), PingSchema, { seq: 5n, payload }, PongSchema, { timeoutMs });

beforeAll(async () => {
  topo = await TestTopology.start([{ kind: "device-sim", name: PROC }]);
  const log = createLogger("test", "silent");
  a = await Bus.connect({ url: topo.natsUrl, name: "a", log });
  b = await Bus.connect({ url: topo.natsUrl, name: "b", log });
}, 60_000);

afterAll(async () => {
  await a?.close();
  await b?.close();
  await topo?.stop();
});

/** Collect `n` messages (or whatever arrived after `quietMs` without more). */
async function collect(bus: Bus, subject: string, send: () => void, quietMs = 300): Promise<{ seq: bigint; payload: Uint8Array }[]> {
  const got: { seq: bigint; payload: Uint8Array }[] = [];
  const sub = bus.subscribe(subject, PingSchema, (m) => {
    got.push({ seq: m.seq, payload: m.payload });
  });
  await bus.flush();
  send();
  let last = -1;
  while (got.length !== last) {
    last = got.length;
    await new Promise((r) => setTimeout(r, quietMs));
  }
  sub.unsubscribe();
  return got;
}

describe("fault rules on a real process", () => {
  it("are set, listed and cleared over the control subject; a bad rule is EINVAL and changes nothing", async () => {
    const rules = await setFaultRules(a, PROC, [{ id: "r1", subject: "iommu.v1.dev.*.dma", action: FaultAction.DELAY, delayMs: 5 }]);
    expect(rules.map((r) => r.id)).toEqual(["r1"]);
    for (const bad of [
      { id: "x", subject: "a..b", action: FaultAction.DROP },
      { id: "x", subject: "a", action: FaultAction.DELAY },
      { id: "x", subject: "a", action: FaultAction.DROP, probability: 2 },
      { id: "x", subject: "a" },
    ]) {
      const e = (await setFaultRules(a, PROC, [bad], true).catch((x: unknown) => x)) as ErrnoError;
      expect(e).toBeInstanceOf(ErrnoError);
      expect(e.errno).toBe("EINVAL");
    }
    expect((await listFaultRules(a, PROC)).map((r) => r.id)).toEqual(["r1"]);
    expect(await clearFaultRules(a, PROC)).toBe(1);
    expect(await listFaultRules(a, PROC)).toEqual([]);
  });

  it("drops exactly N requests it receives (the requester times out), and counts them", async () => {
    await setFaultRules(a, PROC, [{ id: "drop3", subject: subjects.ping(PROC), action: FaultAction.DROP, count: 3, direction: FaultDirection.INBOUND }]);
    const outcomes: string[] = [];
    for (let i = 0; i < 8; i++) outcomes.push(await ping(a, 250).then(() => "ok", (e: ErrnoError) => e.errno));
    expect(outcomes).toEqual(["ETIMEDOUT", "ETIMEDOUT", "ETIMEDOUT", "ok", "ok", "ok", "ok", "ok"]);
    const [rule] = await listFaultRules(a, PROC);
    expect(rule).toMatchObject({ id: "drop3", hits: 3n });
    await clearFaultRules(a, PROC);
  });

  it("delays its replies by delay_ms (measurable round trip)", async () => {
    const rtt = async () => {
      const t = performance.now();
      await ping(a);
      return performance.now() - t;
    };
    await rtt();
    const before = await rtt();
    await setFaultRules(a, PROC, [
      { id: "slow", subject: subjects.ping(PROC), action: FaultAction.DELAY, delayMs: 250, replies: true, direction: FaultDirection.OUTBOUND },
    ]);
    const slow = await rtt();
    expect(before).toBeLessThan(150);
    expect(slow).toBeGreaterThanOrEqual(245);
    expect((await listFaultRules(a, PROC))[0]?.hits).toBe(1n);
    await clearFaultRules(a, PROC, ["slow"]);
    expect(await rtt()).toBeLessThan(150);
  });

  it("a corrupted request reaches the process with one bit flipped: it fails to decode (EIO) or answers the changed message", async () => {
    // Ping { seq: 5 } is two bytes (tag 0x08, varint 0x05): a flip in the tag
    // makes it undecodable or another field; a flip in the value changes seq.
    // Corrupted on the sending side (this test's Bus), seeded: reproducible.
    a.faults.set({ rules: [{ id: "flip", subject: subjects.ping(PROC), action: FaultAction.CORRUPT, count: 40, seed: 99n }] });
    const outcomes = { undecodable: 0, seqChanged: 0, otherField: 0 };
    for (let i = 0; i < 40; i++) {
      const r = await ping(a).catch((e: unknown) => e);
      if (r instanceof ErrnoError) {
        expect(r.errno).toBe("EIO");
        outcomes.undecodable++;
      } else if ((r as { seq: bigint }).seq !== 5n) outcomes.seqChanged++;
      else outcomes.otherField++;
    }
    expect(a.faults.list()[0]?.hits).toBe(40n);
    expect(outcomes.undecodable + outcomes.seqChanged + outcomes.otherField).toBe(40);
    // What seed 99 does to these two bytes, every run.
    expect(outcomes).toEqual({ undecodable: 10, seqChanged: 26, otherField: 4 });
    a.faults.clear([]);
    expect((await ping(a)).seq).toBe(5n);
  });

  it("a '>' DROP rule stops all its traffic but never its control subject", async () => {
    await setFaultRules(a, PROC, [{ id: "all", subject: ">", action: FaultAction.DROP }]);
    expect(((await ping(a, 200).catch((e: unknown) => e)) as ErrnoError).errno).toBe("ETIMEDOUT");
    expect((await listFaultRules(a, PROC)).map((r) => r.id)).toEqual(["all"]);
    expect(await clearFaultRules(a, PROC)).toBe(1);
    expect((await ping(a)).process).toBe(PROC);
  });
});

describe("fault rules between two Bus instances", () => {
  it("drop N published messages → exactly N lost, the ones after `skip`", async () => {
    a.faults.set({ rules: [{ id: "d", subject: "t.drop.>", action: FaultAction.DROP, skip: 10, count: 7, direction: FaultDirection.OUTBOUND }] });
    const got = await collect(b, "t.drop.>", () => {
      for (let i = 0; i < 100; i++) a.publish(`t.drop.x${i % 3}`, PingSchema, { seq: BigInt(i) });
    });
    expect(got).toHaveLength(93);
    const seen = new Set(got.map((m) => Number(m.seq)));
    expect(Array.from({ length: 100 }, (_, i) => i).filter((i) => !seen.has(i))).toEqual([10, 11, 12, 13, 14, 15, 16]);
    expect(a.faults.list()[0]?.hits).toBe(7n);
    a.faults.clear([]);
  });

  it("duplicate N received messages → N extra deliveries", async () => {
    b.faults.set({ rules: [{ id: "dup", subject: "t.dup", action: FaultAction.DUPLICATE, count: 5, direction: FaultDirection.INBOUND }] });
    const got = await collect(b, "t.dup", () => {
      for (let i = 0; i < 50; i++) a.publish("t.dup", PingSchema, { seq: BigInt(i) });
    });
    expect(got).toHaveLength(55);
    expect(got.slice(0, 10).map((m) => Number(m.seq))).toEqual([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
    expect(b.faults.list()[0]?.hits).toBe(5n);
    b.faults.clear([]);
  });

  it("delay holds a message back by delay_ms (later messages overtake it)", async () => {
    a.faults.set({ rules: [{ id: "late", subject: "t.delay", action: FaultAction.DELAY, delayMs: 200, count: 1 }] });
    const arrivals: [bigint, number][] = [];
    const t0 = performance.now();
    const sub = b.subscribe("t.delay", PingSchema, (m) => {
      arrivals.push([m.seq, performance.now() - t0]);
    });
    await b.flush();
    a.publish("t.delay", PingSchema, { seq: 1n });
    a.publish("t.delay", PingSchema, { seq: 2n });
    await expect.poll(() => arrivals.length).toBe(2);
    sub.unsubscribe();
    expect(arrivals.map(([s]) => s)).toEqual([2n, 1n]);
    expect(arrivals[1]?.[1]).toBeGreaterThanOrEqual(195);
    a.faults.clear([]);
  });

  it("corrupt flips exactly one bit of what the receiver decodes (seeded)", async () => {
    const payload = new Uint8Array(4096).fill(0xa5);
    b.faults.set({ rules: [{ id: "c", subject: "t.corrupt", action: FaultAction.CORRUPT, seed: 7n, direction: FaultDirection.INBOUND }] });
    const got = await collect(b, "t.corrupt", () => {
      for (let i = 0; i < 10; i++) a.publish("t.corrupt", PingSchema, { seq: 1n, payload });
    });
    expect(got).toHaveLength(10);
    for (const m of got) {
      let bits = m.seq === 1n ? 0 : 1;
      for (let j = 0; j < payload.length; j++) for (let x = (m.payload[j] as number) ^ 0xa5; x; x &= x - 1) bits++;
      expect(bits).toBe(1);
    }
    expect(b.faults.list()[0]?.hits).toBe(10n);
    b.faults.clear([]);
  });
});
