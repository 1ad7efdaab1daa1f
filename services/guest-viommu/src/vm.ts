// One VM: its VMM (session, objects, virtual IOMMU) and its guest kernel,
// with a lifecycle. The VM boots when the host answers (retrying with
// backoff while it does not: the process is up and serving its control API
// before the host is); when the session is lost (host restarted, lease
// expired) guest RAM is gone with it, so the VM is rebuilt — a new session
// and a fresh guest boot (DESIGN §8: "guest rebuild") — and `rebuilds`
// counts it. The event log lives across rebuilds.
import { ErrnoError, type Logger } from "@iommufd/kit";
import { GuestKernel } from "./guest/kernel.js";
import { EventLog, type GuestLogEntry } from "./guest/log.js";
import type { IommuVendor } from "./guest/port.js";
import { sleep } from "./util.js";
import type { IommufdClient, HostEventPort, HostInventory } from "./vmm/client.js";
import { type SessionStateName, Vmm, type VmmDeviceSpec, type VmmOptions } from "./vmm/vmm.js";

/** What a VMM needs from the host for one session. */
export interface HostConnection {
  client: IommufdClient;
  setSessionToken?(token: string | undefined): void;
  inventory?: HostInventory;
  events: HostEventPort;
  ramFactory: VmmOptions["ramFactory"];
  close?(): void;
}

export interface VmOptions {
  vmName: string;
  vendor: IommuVendor;
  memory: bigint;
  devices: readonly VmmDeviceSpec[];
  connect(): HostConnection;
  log?: Logger;
  vmm?: Partial<Pick<VmmOptions, "leaseMs" | "veventqDepth" | "smmu" | "vtd">>;
  /** Backoff bounds while the host is unreachable. */
  retryMs?: { min: number; max: number };
}

export class Vm {
  readonly log: EventLog;
  vmm?: Vmm;
  kernel?: GuestKernel;
  rebuilds = 0;
  private conn?: HostConnection;
  private stopped = false;
  private stopResolve?: () => void;
  private readonly stopSignal: Promise<void>;
  private loopDone?: Promise<void>;
  private readyWaiters: (() => void)[] = [];
  lastError?: string;

  constructor(readonly opts: VmOptions) {
    const plog = opts.log;
    this.log = new EventLog(4096, plog ? (e: GuestLogEntry) => plog.info({ source: e.source, kind: e.kind, virtId: e.virtId, pasid: e.pasid, addr: e.addr?.toString(16) }, e.text) : undefined);
    this.stopSignal = new Promise((r) => (this.stopResolve = r));
  }

  get state(): SessionStateName {
    if (this.stopped) return "closed";
    return this.vmm?.state ?? "connecting";
  }

  /** The VM is booted and its session open. */
  get running(): boolean {
    return this.vmm?.state === "open" && this.kernel?.isBooted === true;
  }

  /** The booted VM, or ENOTCONN while it is (re)connecting. */
  require(): { vmm: Vmm; kernel: GuestKernel } {
    if (!this.running || !this.vmm || !this.kernel) throw new ErrnoError("ENOTCONN", `VM ${this.opts.vmName} is not running (${this.state}${this.lastError ? `: ${this.lastError}` : ""})`);
    return { vmm: this.vmm, kernel: this.kernel };
  }

  /** Resolves once the VM has booted (tests, launchers). */
  whenRunning(timeoutMs = 30_000): Promise<void> {
    if (this.running) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`VM not running after ${timeoutMs} ms: ${this.lastError ?? this.state}`)), timeoutMs);
      this.readyWaiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  start(): void {
    this.loopDone ??= this.loop();
  }

  private plog(level: "debug" | "info" | "warn" | "error", msg: string, fields: Record<string, unknown> = {}): void {
    this.opts.log?.[level](fields, msg);
  }

  private async bootOnce(): Promise<void> {
    this.conn = this.opts.connect();
    const c = this.conn;
    const vmm = new Vmm({
      vendor: this.opts.vendor,
      vmName: this.opts.vmName,
      memory: this.opts.memory,
      devices: this.opts.devices,
      client: c.client,
      ...(c.setSessionToken ? { setSessionToken: c.setSessionToken } : {}),
      ...(c.inventory ? { inventory: c.inventory } : {}),
      events: c.events,
      ramFactory: c.ramFactory,
      ...this.opts.vmm,
      log: (level, msg, fields) => this.plog(level, msg, fields),
      onSessionEvent: (kind, text) => this.log.append({ source: "session", kind, text }),
    });
    this.vmm = vmm;
    this.kernel = undefined;
    await vmm.start();
    const kernel = new GuestKernel(vmm.port, { log: this.log });
    this.kernel = kernel;
    await kernel.boot();
  }

  private async loop(): Promise<void> {
    const min = this.opts.retryMs?.min ?? 200;
    const max = this.opts.retryMs?.max ?? 2000;
    let delay = min;
    let booted = false;
    while (!this.stopped) {
      try {
        await this.bootOnce();
        if (booted) {
          this.rebuilds++;
          this.log.append({ source: "session", kind: "rebuilt", text: `VM rebuilt on a new session (${this.rebuilds} rebuild(s))` });
        }
        booted = true;
        this.lastError = undefined;
        delay = min;
        this.plog("info", "VM running", { sessionId: this.vmm?.sessionId });
        for (const w of this.readyWaiters.splice(0)) w();
        await Promise.race([this.vmm?.whenLost(), this.stopSignal]);
        if (this.stopped) break;
        this.conn?.close?.();
        this.log.append({ source: "session", kind: "rebuild", text: "session lost: rebuilding the VM (guest RAM is gone with the session)" });
      } catch (e) {
        this.lastError = e instanceof Error ? e.message : String(e);
        if (this.stopped) break;
        this.plog(booted ? "warn" : "debug", "VM boot failed; retrying", { err: this.lastError, retryInMs: delay });
        await this.vmm?.stop().catch(() => undefined);
        this.conn?.close?.();
        await Promise.race([sleep(delay), this.stopSignal]);
        delay = Math.min(max, delay * 2);
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopResolve?.();
    await this.vmm?.stop().catch(() => undefined);
    await this.loopDone;
    this.conn?.close?.();
  }
}
