// The device-sim process's state: its endpoints (by RID), the host.up
// listener that makes them register again after a host restart, and the
// workloads. The control API (control.ts) is a thin layer over this.
import { type Bus, ErrnoError, type Logger, ridToken, subjects } from "@iommufd/kit";
import { type HostUp, HostUpSchema, type TranslationFault } from "@iommufd/proto/bus";
import type { WorkloadSpec } from "@iommufd/proto/device";
import type { Subscription } from "nats";
import type { EndpointConfig } from "./config.js";
import { Endpoint } from "./endpoint.js";
import { SeqCounter, SeqTracker } from "./seq.js";
import { normalizeSpec, Workload } from "./workload.js";

export interface DeviceSimOptions {
  bus: Bus;
  /** This process's name (registered names are "<process>/<endpoint>"). */
  processName: string;
  log: Logger;
  endpoints: EndpointConfig[];
  /** Timeout of each bus request (default 5000). */
  requestTimeoutMs?: number;
  /** How long to wait for a page group response (default 5000). */
  priTimeoutMs?: number;
  /** Unregister the endpoints on stop (default true). */
  unregisterOnStop?: boolean;
}

/** Finished workloads kept for GetWorkload. */
const KEEP_FINISHED = 256;

export class DeviceSim {
  readonly endpoints = new Map<number, Endpoint>();
  readonly workloads = new Map<string, Workload>();
  readonly log: Logger;
  /** The host.up stream: numbered from 1 per host start (epoch). */
  readonly hostUpTracker = new SeqTracker();
  private hostUpEpoch: bigint | undefined;
  private readonly registerSeq = new SeqCounter();
  private sub: Subscription | undefined;
  private nextWorkload = 1;

  constructor(private readonly opts: DeviceSimOptions) {
    this.log = opts.log;
    for (const cfg of opts.endpoints) {
      if (this.endpoints.has(cfg.rid)) throw new ErrnoError("EEXIST", `rid ${ridToken(cfg.rid)} given twice`);
      this.endpoints.set(
        cfg.rid,
        new Endpoint(cfg, {
          bus: opts.bus,
          processName: opts.processName,
          log: opts.log,
          registerSeq: this.registerSeq,
          requestTimeoutMs: opts.requestTimeoutMs ?? 5000,
          priTimeoutMs: opts.priTimeoutMs ?? 5000,
        }),
      );
    }
  }

  /** Listen for HostUp, then start every endpoint (each registers in the background). */
  start(): void {
    this.sub = this.opts.bus.subscribe(subjects.hostUp, HostUpSchema, (up) => this.onHostUp(up));
    for (const ep of this.endpoints.values()) ep.start();
    if (this.endpoints.size === 0) this.log.warn("no endpoints configured (--endpoint / --config): nothing to register");
  }

  private onHostUp(up: HostUp): void {
    if (up.hostEpoch !== this.hostUpEpoch) {
      // A new host start numbers its HostUp stream from 1 again.
      this.hostUpEpoch = up.hostEpoch;
      this.hostUpTracker.reset();
    }
    const v = this.hostUpTracker.observe(up.seq);
    if (v.kind === "gap") {
      this.log.warn({ stream: "host.up", seq: String(up.seq), expected: String(v.expected), missing: String(v.missing) }, "sequence gap: messages lost");
      for (const ep of this.endpoints.values()) ep.hostUpGaps++;
    } else if (v.kind !== "in-order") this.log.warn({ stream: "host.up", seq: String(up.seq), kind: v.kind }, "sequence: out-of-order host.up");
    this.log.info({ hostEpoch: String(up.hostEpoch), host: up.process, seq: String(up.seq) }, "host up");
    for (const ep of this.endpoints.values()) ep.onHostUp(up);
  }

  async stop(): Promise<void> {
    this.sub?.unsubscribe();
    await Promise.all([...this.workloads.values()].map((w) => w.stop()));
    await Promise.all([...this.endpoints.values()].map((ep) => ep.stop(this.opts.unregisterOnStop ?? true)));
  }

  /** The endpoint with this RID, or ENOENT. */
  endpoint(rid: number): Endpoint {
    const ep = this.endpoints.get(rid);
    if (!ep) throw new ErrnoError("ENOENT", `no endpoint with rid ${ridToken(rid)}`);
    return ep;
  }

  startWorkload(spec: WorkloadSpec | undefined): Workload {
    if (!spec) throw new ErrnoError("EINVAL", "no workload spec");
    const ep = this.endpoint(spec.rid);
    const s = normalizeSpec(ep, spec);
    const id = `w${this.nextWorkload++}`;
    const w = new Workload(id, ep, s);
    this.workloads.set(id, w);
    this.prune();
    return w;
  }

  workload(id: string): Workload {
    const w = this.workloads.get(id);
    if (!w) throw new ErrnoError("ENOENT", `no workload ${JSON.stringify(id)}`);
    return w;
  }

  private prune(): void {
    const finished = [...this.workloads.values()].filter((w) => !w.ep.workloadIds.has(w.id));
    for (const w of finished.slice(0, Math.max(0, finished.length - KEEP_FINISHED))) this.workloads.delete(w.id);
  }
}

export type { TranslationFault };
