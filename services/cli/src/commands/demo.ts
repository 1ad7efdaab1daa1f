// `demo`: the main job. Brings up a topology (the embedded default: a host
// with an SMMUv3 and a VT-d instance, one device-sim with an endpoint behind
// each, one VM per vendor with its endpoint assigned), then for each VM:
// nested translation set up by the guest, verified device DMA through guest
// stage 1 over host stage 2, an unmap whose next DMA faults (seen by the
// guest with its virtual ID), SVA with PRI; then one injected fault of each
// kind (a dropped bus message, a host fail-nth, a device-sim killed and
// restarted); and prints what each party saw. Exits 1 if a step failed.
import { join } from "node:path";
import type { Command } from "commander";
import { progress } from "../progress.js";
import { REPO_ROOT } from "../state.js";

interface DemoOptions {
  topology?: string;
  logDir: string;
}

type Outcome = { ok: true; lines: string[] } | { ok: false; lines: string[]; error: string };

export function demoCommand(program: Command): void {
  program
    .command("demo")
    .description("bring up the topology, run nested-translation workloads for each VM, inject one fault of each kind, and print what each party saw")
    .option("-t, --topology <file>", "topology description (YAML); default: the embedded default topology")
    .option("--log-dir <dir>", "raw log of each process in <dir>/<name>.log", join(REPO_ROOT, ".tmp/demo/logs"))
    .addHelpText("after", "\nNeeds a topology with at least one guest whose devices belong to a device-sim (the default has two).")
    .action(async (o: DemoOptions) => {
      process.exitCode = (await demo(o)) ? 0 : 1;
    });
}

const hex = (v: bigint | number) => `0x${v.toString(16)}`;

async function demo(o: DemoOptions): Promise<boolean> {
  const { Launcher, loadTopology } = await import("@iommufd/topology");
  const { Bus, createClient, createLogger, setFaultRules, clearFaultRules, ErrnoError } = await import("@iommufd/kit");
  const { Admin } = await import("@iommufd/proto/iommufd");
  const { Guest, GuestEventSource, SessionState } = await import("@iommufd/proto/guest");
  const { Device, DmaKind, WorkloadKind, WorkloadState } = await import("@iommufd/proto/device");
  const { DmaStatus, FaultAction } = await import("@iommufd/proto/bus");

  const topology = loadTopology(o.topology);
  const t0 = Date.now();
  const total = ("url" in topology.nats ? 0 : 1) + 1 + topology.devices.length + topology.guests.length;
  const bar = progress(`starting ${topology.name}`, total);
  const launcher = await Launcher.start(topology, {
    ports: "auto",
    logDir: o.logDir,
    output: (line) => bar.log(line),
    processLogs: false,
    color: false,
    readyTimeoutMs: 60_000,
    onEvent: (e) => {
      if (e.type === "ready") bar.tick(1, e.name);
    },
  });
  bar.stop();
  const say = (s = "") => process.stdout.write(`${s}\n`);
  const results: { title: string; outcome: Outcome }[] = [];
  const step = async (title: string, fn: (lines: string[]) => Promise<void>) => {
    const lines: string[] = [];
    try {
      await fn(lines);
      results.push({ title, outcome: { ok: true, lines } });
      say(`✔ ${title}`);
    } catch (e) {
      const error = e instanceof ErrnoError ? `${e.errno} (${e.number}): ${e.message}` : (e as Error).message;
      results.push({ title, outcome: { ok: false, lines, error } });
      say(`✘ ${title}: ${error}`);
    }
    for (const l of lines) say(`    ${l}`);
  };

  const addr = (name: string) => {
    const p = launcher.status().find((s) => s.name === name);
    if (!p?.grpcPort) throw new Error(`${name} has no gRPC address`);
    return `127.0.0.1:${p.grpcPort}`;
  };
  let deviceStats: { rid: number; dmaOps: bigint; atcHits: bigint; atcMisses: bigint; atcInvalidations: bigint; pageRequests: bigint; faults: bigint; retries: bigint }[] = [];
  const bus = await Bus.connect({ url: launcher.natsUrl, name: "demo", log: createLogger("demo", "silent") });
  const admin = createClient(Admin, addr(topology.host.name)).rpc;
  try {
    say();
    say(`topology "${topology.name}" up in ${Date.now() - t0} ms: ${launcher.status().map((p) => `${p.name} (pid ${p.pid})`).join(", ")}`);
    say(`process logs: ${o.logDir}`);
    say();

    // Each guest assigned device: its endpoint on the device-sim, and the RID.
    const endpoints = new Map<string, { devsim: string; rid: number; iommu: string }>();
    for (const d of topology.devices) for (const e of d.endpoints) endpoints.set(`${d.name}/${e.name}`, { devsim: d.name, rid: e.rid, iommu: e.iommu });
    for (const g of topology.guests) {
      const guest = createClient(Guest, addr(g.name)).rpc;
      for (const ref of g.devices) {
        const ep = endpoints.get(ref);
        if (!ep) continue;
        const dev = createClient(Device, addr(ep.devsim)).rpc;
        const { rid } = ep;
        let cursor = 1n;
        const waitEvent = async (pred: (e: { kind: string; source: number }) => boolean, ms = 8000) => {
          const deadline = Date.now() + ms;
          while (Date.now() < deadline) {
            const r = await guest.readEventLog({ fromSeq: cursor, waitMs: 300 });
            for (const e of r.events) if (pred(e)) return e;
            cursor = r.nextSeq;
          }
          throw new Error("the guest saw no such event");
        };

        await step(`${g.name} (${g.vendor}): the VMM set up nested translation for ${ref}`, async (lines) => {
          // The VM boots in the background: wait until its session is open and its device probed.
          for (let i = 0; i < 150; i++) {
            const info = await guest.info({}).catch(() => undefined);
            const devs = info?.sessionState === SessionState.OPEN ? await guest.listDevices({}).catch(() => undefined) : undefined;
            if (devs?.devices.some((d) => d.rid === rid && d.hwptId > 0)) break;
            await new Promise((r) => setTimeout(r, 200));
          }
          const info = await guest.info({});
          const d = (await guest.listDevices({})).devices.find((x) => x.rid === rid);
          if (!d) throw new Error(`device ${ref} is not in the VM`);
          lines.push(`iommufd session ${info.sessionId}: IOAS ${info.ioasId} (guest RAM at IOVA = GPA), nest-parent HWPT ${info.s2HwptId}${info.viommuId ? `, vIOMMU ${info.viommuId}` : ""}`);
          lines.push(`device ${d.name} rid ${hex(d.rid)} → virtual ID ${hex(d.virtId)}, DEVICE ${d.devId}, nested HWPT ${d.hwptId}${d.vdeviceId ? `, vDEVICE ${d.vdeviceId}` : ""}, ATS ${d.atsEnabled ? "on" : "off"}, PRI ${d.priEnabled ? "on" : "off"}`);
        });

        let iova = 0n;
        const len = 64n * 1024n;
        await step(`${g.name}: device DMA through guest stage 1 over host stage 2, verified end to end`, async (lines) => {
          const m = await guest.map({ rid, length: len, prot: 3 });
          iova = m.iova;
          lines.push(`guest DMA API mapped IOVA ${hex(m.iova)} → GPA ${hex(m.gpa)} (${len / 1024n} KiB)`);
          const pattern = new Uint8Array(4096).map((_, i) => (i * 13 + rid) & 0xff);
          await guest.writeMemory({ target: { case: "gpa", value: m.gpa }, data: pattern });
          const rd = await dev.dma({ rid, kind: DmaKind.READ, iova: m.iova, length: 4096n, useAts: true });
          if (rd.status !== DmaStatus.OK || Buffer.compare(Buffer.from(rd.data), Buffer.from(pattern)) !== 0) throw new Error(`device read back ${rd.data.length} bytes, status ${DmaStatus[rd.status]}`);
          lines.push(`the device read what the guest wrote (4 KiB, via ATS: ${rd.atcMisses} ATC miss)`);
          const w = await dev.startWorkload({ spec: { rid, kind: WorkloadKind.VERIFY, iova: m.iova, length: len, opSize: 4096, count: 256n, batchOps: 16, inFlight: 4 } });
          let st = (await dev.getWorkload({ workloadId: w.workloadId })).status;
          for (let i = 0; i < 300 && st?.state === WorkloadState.RUNNING; i++) {
            await new Promise((r) => setTimeout(r, 50));
            st = (await dev.getWorkload({ workloadId: w.workloadId })).status;
          }
          if (!st || st.errors > 0n || st.verifyMismatches > 0n || st.faults > 0n) throw new Error(`verify workload: ${st?.errors} errors, ${st?.verifyMismatches} mismatches, ${st?.faults} faults ${st?.error ?? ""}`);
          lines.push(`verify workload (untranslated DMA): ${st.ops} ops, ${st.bytes} bytes, 0 mismatches in ${(Number(st.elapsedNs) / 1e6).toFixed(1)} ms`);
          // The same pages again through ATS: the first access per page misses, the rest hit the device's ATC.
          const before = (await dev.stats({ rid })).endpoints[0];
          for (let i = 0; i < 32; i++) await dev.dma({ rid, kind: DmaKind.READ, iova: m.iova + BigInt((i % 16) * 4096), length: 512n, useAts: true });
          const after = (await dev.stats({ rid })).endpoints[0];
          const hits = Number((after?.atcHits ?? 0n) - (before?.atcHits ?? 0n));
          const misses = Number((after?.atcMisses ?? 0n) - (before?.atcMisses ?? 0n));
          lines.push(`32 reads through ATS: ${hits} ATC hits, ${misses} misses (${((100 * hits) / Math.max(1, hits + misses)).toFixed(0)}% hit rate)`);
        });

        await step(`${g.name}: the guest unmaps; the device's next DMA faults and the guest sees it`, async (lines) => {
          const u = await guest.unmap({ rid, iova, length: len });
          lines.push(`unmap of ${u.length / 1024n} KiB: ${u.invalidations.length} invalidation commands (${[...new Set(u.invalidations.map((i) => i.kind))].join(", ")}) forwarded in ${u.hwptInvalidateCalls} HWPT_INVALIDATE call(s)`);
          // Untranslated, so the IOMMU itself faults and records it (a failed ATS translation is not an event).
          const r = await dev.dma({ rid, kind: DmaKind.READ, iova, length: 8n });
          lines.push(`device DMA at ${hex(iova)}: ${DmaStatus[r.status]}${r.fault ? ` — ${r.fault.vendorName || r.fault.detail} (stage ${r.fault.stage})` : ""}`);
          if (r.status === DmaStatus.OK) throw new Error("the DMA after unmap succeeded");
          if (g.vendor === "smmuv3") {
            const e = await waitEvent((x) => x.source === GuestEventSource.VEVENTQ);
            lines.push(`guest event queue: ${(e as { text?: string }).text ?? e.kind}`);
          } else {
            lines.push(`route: ${r.fault?.route === 2 ? "host fault log" : String(r.fault?.route)} — VT-d has no vEVENTQ in the uAPI, so a guest sees only recoverable (PRI) faults`);
          }
        });

        await step(`${g.name}: SVA with PRI — the device touches an unmapped page of a guest process, the guest faults it in`, async (lines) => {
          const b = await guest.bindProcess({ rid });
          const { va } = await guest.processMmap({ pid: b.pid, length: 4n * 4096n, prot: 3 });
          const data = new TextEncoder().encode(`hello from ${ref} into guest process ${b.pid}`);
          const r = await dev.dma({ rid, pasid: b.pasid, kind: DmaKind.WRITE, iova: va + 4096n, data, useAts: true });
          lines.push(`process ${b.pid} bound to PASID ${b.pasid}; device write at VA ${hex(va + 4096n)}: ${DmaStatus[r.status]} after ${r.pageRequests} page request(s), ${r.retries} retry`);
          if (r.status !== DmaStatus.OK) throw new Error(`the retried DMA ended ${DmaStatus[r.status]}`);
          const back = await guest.readMemory({ target: { case: "process", value: { pid: b.pid, va: va + 4096n } }, length: data.length });
          if (Buffer.compare(Buffer.from(back.data), Buffer.from(data)) !== 0) throw new Error("the guest process does not see the device's data");
          lines.push("the guest process reads the device's data");
        });
      }
    }

    // Injected faults, one of each kind.
    const firstGuest = topology.guests[0];
    const firstRef = firstGuest?.devices[0];
    const ep = firstRef ? endpoints.get(firstRef) : undefined;
    if (firstGuest && ep) {
      const dev = createClient(Device, addr(ep.devsim)).rpc;
      const guest = createClient(Guest, addr(firstGuest.name)).rpc;
      await step(`message fault: ${ep.devsim} drops its next DMA request on the bus`, async (lines) => {
        const m = await guest.map({ rid: ep.rid, length: 4096n, prot: 3 });
        await setFaultRules(bus, ep.devsim, [{ subject: `iommu.v1.dev.*.dma`, action: FaultAction.DROP, count: 1 }]);
        const t = Date.now();
        const r = await dev.dma({ rid: ep.rid, kind: DmaKind.READ, iova: m.iova, length: 64n }).catch((e: unknown) => e);
        lines.push(`the device saw ${r instanceof ErrnoError ? `${r.errno} after ${Date.now() - t} ms` : `status ${DmaStatus[(r as { status: number }).status]}`}`);
        const again = await dev.dma({ rid: ep.rid, kind: DmaKind.READ, iova: m.iova, length: 64n });
        lines.push(`the next DMA: ${DmaStatus[again.status]} (the rule fired once)`);
        await clearFaultRules(bus, ep.devsim);
        if (!(r instanceof ErrnoError) || again.status !== DmaStatus.OK) throw new Error("the drop was not seen as a time-out, or the bus did not recover");
      });

      const vtd = topology.guests.find((g) => g.vendor === "vtd");
      const vtdEp = vtd?.devices[0] ? endpoints.get(vtd.devices[0]) : undefined;
      if (vtd && vtdEp) {
        await step(`host fail-nth: the first allocation of ${vtd.name}'s next PASID bind fails`, async (lines) => {
          const g = createClient(Guest, addr(vtd.name)).rpc;
          const info = await g.info({});
          const objects = async () => (await admin.dumpObjects({ sessionIds: [info.sessionId] })).sessions[0]?.objects.length ?? 0;
          const before = await objects();
          await admin.setFailNth({ sessionId: info.sessionId, nth: 1n });
          const r = await g.bindProcess({ rid: vtdEp.rid }).catch((e: unknown) => e);
          const st = await admin.getFailNth({ sessionId: info.sessionId });
          await admin.setFailNth({ sessionId: info.sessionId, nth: 0n });
          lines.push(`the host failed "${st.injectedPoint || "(nothing)"}" with ENOMEM; the guest's bind ${r instanceof ErrnoError ? `failed with ${r.errno}: ${r.message}` : `returned PASID ${(r as { pasid: number }).pasid}`}`);
          const after = await objects();
          lines.push(`the VM's session had ${before} objects before and ${after} after`);
          const again = await g.bindProcess({ rid: vtdEp.rid });
          lines.push(`a second bind, with nothing injected: PASID ${again.pasid}; the session has ${await objects()} objects`);
          if (!st.injected) throw new Error("nothing was injected");
        });
      }

      await step(`process fault: ${ep.devsim} is killed (-9) and restarted`, async (lines) => {
        deviceStats = (await dev.stats({}).catch(() => undefined))?.endpoints ?? [];
        await launcher.kill(ep.devsim);
        let inv = await admin.inventory({});
        lines.push(`after the kill the host still lists ${inv.devices.filter((d) => d.registeredBy === ep.devsim).length} of its endpoint(s) (a PCIe function does not vanish when its driver dies)`);
        await launcher.restart(ep.devsim);
        for (let i = 0; i < 50; i++) {
          inv = await admin.inventory({});
          if (inv.devices.filter((d) => d.registeredBy === ep.devsim).length === topology.devices.find((d) => d.name === ep.devsim)?.endpoints.length) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        const mine = inv.devices.filter((d) => d.registeredBy === ep.devsim);
        lines.push(`restarted: its endpoints registered again: ${mine.map((d) => `${d.name}${d.boundSessionId ? ` (bound to ${d.boundSessionId})` : " (unbound)"}`).join(", ")}`);
        const devs = (await guest.listDevices({})).devices;
        lines.push(`${firstGuest.name} now lists ${devs.length} device(s)${devs.length ? `: ${devs.map((d) => `${d.name} hwpt ${d.hwptId}`).join(", ")}` : ""}`);
        if (mine.length === 0) throw new Error("the endpoints did not register again");
      });
    }

    // What each party saw.
    say();
    say("what each party saw");
    const metrics = (await admin.metrics({})).text;
    const counter = (name: string) => Number(new RegExp(`counter="${name}"[^}]*\\} (\\d+)`).exec(metrics)?.[1] ?? 0);
    say(`  host: ${(await admin.dumpObjects({})).sessions.length} session(s); DMA ${counter("dmaOps")} ops / ${counter("dmaBytes")} bytes, ${counter("dmaFaults")} faults, ${counter("atsRequests")} ATS requests, ${counter("pageRequests")} page requests, ${counter("atcInvalidations")} ATC invalidations (${counter("atcTimeouts")} timed out)`);
    for (const e of deviceStats) {
      say(`  device rid ${hex(e.rid)} (before its restart): ${e.dmaOps} DMA ops, ATC ${e.atcHits} hits / ${e.atcMisses} misses, ${e.atcInvalidations} invalidations received, ${e.pageRequests} page requests, ${e.faults} faults, ${e.retries} retries`);
    }
    for (const g of topology.guests) {
      const guest = createClient(Guest, addr(g.name)).rpc;
      const s = await guest.stats({}).catch(() => undefined);
      const log = await guest.readEventLog({ fromSeq: 1n, maxEvents: 1000 }).catch(() => undefined);
      const kinds = new Map<string, number>();
      for (const e of log?.events ?? []) kinds.set(e.kind, (kinds.get(e.kind) ?? 0) + 1);
      say(`  ${g.name}: ${s?.maps ?? 0} maps, ${s?.unmaps ?? 0} unmaps, ${s?.hwptInvalidateCalls ?? 0} HWPT_INVALIDATE calls, ${s?.vevents ?? 0} vEVENTs, ${s?.pageRequests ?? 0} page requests; event log: ${[...kinds].map(([k, n]) => `${k}×${n}`).join(", ") || "empty"}`);
    }
  } finally {
    await bus.close();
    await launcher.stop();
  }
  const failed = results.filter((r) => !r.outcome.ok);
  say();
  say(`${results.length - failed.length} of ${results.length} demo steps passed in ${((Date.now() - t0) / 1000).toFixed(1)} s${failed.length ? `; failed: ${failed.map((f) => f.title).join("; ")}` : ""}`);
  return failed.length === 0;
}
