// The guest kernel: its IOMMU core on top of one vendor driver. It owns the
// guest's physical memory allocator and kernel memory (kmem.ts), one DMA
// domain per device (the default domain Linux gives a device: stage-1 tables
// built with packages/hw), the DMA API (map / unmap + the invalidations
// that follow), SVA processes (their own page tables bound to PASIDs), and
// the I/O page-fault handler that answers page requests (allocate, map,
// respond). Everything it does to the IOMMU goes through the driver and the
// VirtualIommuPort: it never sees the VMM or the host.
import { ErrnoError } from "@iommufd/kit";
import { Mutex, hex } from "../util.js";
import type { Domain, DomainUser, DriverCallbacks, GuestDevice, GuestIommuDriver, IssuedInvalidation, PageRequestRecord } from "./iommu.js";
import { KernelMemory, PhysAllocator, TableAllocator, pageAlignUp } from "./kmem.js";
import { EventLog, type GuestLogEntry } from "./log.js";
import { IOMMU_PROT, IoPgtable, dmaProtToPerms, userProtToPerms } from "./pgtable.js";
import type { VirtualIommuPort } from "./port.js";
import { type GuestRamOp, inRam } from "./ram.js";
import { SmmuV3GuestDriver } from "./smmuv3.js";
import { VtdGuestDriver } from "./vtd.js";

const PAGE = 4096n;
/** DMA API IOVAs are handed out from here (below: left for fixed mappings). */
const IOVA_BASE = 0x1000_0000n;
const IOVA_END = 1n << 47n;
/** Process mmap() without a fixed address starts here. */
const MMAP_BASE = 0x7f00_0000_0000n;

/** First-fit allocator over [base, end) of page-aligned ranges. */
export class RangeAllocator {
  private used: { start: bigint; end: bigint }[] = [];

  constructor(
    private readonly base: bigint,
    private readonly end: bigint,
  ) {}

  overlaps(start: bigint, size: bigint): boolean {
    return this.used.some((u) => start < u.end && u.start < start + size);
  }

  reserve(start: bigint, size: bigint): void {
    if (this.overlaps(start, size)) throw new ErrnoError("EEXIST", `range ${hex(start)}+${hex(size)} in use`);
    this.used.push({ start, end: start + size });
    this.used.sort((a, b) => (a.start < b.start ? -1 : 1));
  }

  alloc(size: bigint): bigint {
    let cur = this.base;
    for (const u of this.used) {
      if (u.end <= cur) continue;
      if (u.start >= cur + size) break;
      cur = u.end;
    }
    if (cur + size > this.end) throw new ErrnoError("ENOSPC", "no free address space");
    this.reserve(cur, size);
    return cur;
  }

  release(start: bigint, size: bigint): void {
    const end = start + size;
    const out: { start: bigint; end: bigint }[] = [];
    for (const u of this.used) {
      if (u.end <= start || u.start >= end) out.push(u);
      else {
        if (u.start < start) out.push({ start: u.start, end: start });
        if (u.end > end) out.push({ start: end, end: u.end });
      }
    }
    this.used = out;
  }
}

interface Buffer {
  iova: bigint;
  gpa: bigint;
  size: bigint;
  /** Allocated by the DMA API (freed on unmap) rather than given by the caller. */
  owned: boolean;
}

export interface DmaDomain extends Domain {
  readonly iovas: RangeAllocator;
  readonly buffers: Map<bigint, Buffer>;
}

export interface KDevice {
  readonly dev: GuestDevice;
  readonly domain: DmaDomain;
  /** SVA bindings: PASID → pid. */
  readonly pasids: Map<number, number>;
  /** PASIDs this kernel allocated (freed on unbind). */
  readonly allocatedPasids: Set<number>;
}

export interface Vma {
  start: bigint;
  end: bigint;
  /** PROT_READ 1, PROT_WRITE 2, PROT_EXEC 4. */
  prot: number;
}

export class GuestProcess {
  readonly vmas: Vma[] = [];
  /** Populated pages: VA page → GPA. */
  readonly pages = new Map<bigint, bigint>();
  readonly bindings = new Set<string>();
  readonly vaSpace = new RangeAllocator(MMAP_BASE, IOVA_END);

  constructor(
    readonly pid: number,
    readonly domain: Domain,
  ) {}

  vmaAt(va: bigint): Vma | undefined {
    return this.vmas.find((v) => va >= v.start && va < v.end);
  }
}

export interface KernelCounters {
  maps: number;
  unmaps: number;
  invalidationCommands: number;
  pageRequests: number;
  pageResponses: number;
  pagesFaultedIn: number;
}

export interface KernelOptions {
  /** The log to append to (a VM keeps one across reboots); default a new one. */
  log?: EventLog;
  /** Where log entries also go (the process log). */
  logSink?: (e: GuestLogEntry) => void;
  logCapacity?: number;
}

export class GuestKernel {
  readonly log: EventLog;
  readonly kmem = new KernelMemory();
  readonly phys: PhysAllocator;
  readonly tables: TableAllocator;
  readonly driver: GuestIommuDriver;
  readonly devices = new Map<number, KDevice>();
  readonly processes = new Map<number, GuestProcess>();
  readonly counters: KernelCounters = { maps: 0, unmaps: 0, invalidationCommands: 0, pageRequests: 0, pageResponses: 0, pagesFaultedIn: 0 };
  private readonly lock = new Mutex();
  private nextPid = 100;
  private nextDomainId = 1;
  private booted = false;
  /** Page-fault work in flight (tests wait for it). */
  private faultWork: Promise<void> = Promise.resolve();

  constructor(
    readonly port: VirtualIommuPort,
    opts: KernelOptions = {},
  ) {
    this.log = opts.log ?? new EventLog(opts.logCapacity ?? 4096, opts.logSink);
    this.phys = new PhysAllocator(port.ram.regions);
    this.tables = new TableAllocator(this.phys, this.kmem);
    const cb: DriverCallbacks = {
      log: (e) => this.log.append(e),
      pageRequests: (g) => {
        this.faultWork = this.faultWork.then(() => this.handlePageRequests(g)).catch((err: unknown) => {
          this.log.append({ source: "driver", kind: "iopf error", text: `page fault handler failed: ${String(err)}` });
        });
      },
    };
    this.driver =
      port.vendor === "smmuv3" ? new SmmuV3GuestDriver(port, this.kmem, this.tables, this.phys, cb) : new VtdGuestDriver(port, this.kmem, this.tables, this.phys, cb);
    port.setIrqHandler((line) => {
      void this.driver.handleIrq(line).catch((err: unknown) => this.log.append({ source: "driver", kind: "irq error", text: `${line} interrupt handler failed: ${String(err)}` }));
    });
  }

  get isBooted(): boolean {
    return this.booted;
  }

  /** Probe the IOMMU and give every device its default DMA domain. */
  async boot(): Promise<void> {
    await this.driver.probe();
    for (const fn of this.port.devices) {
      const dev: GuestDevice = { fn, atsEnabled: false, priEnabled: false, pasidBits: 0 };
      const domain = this.newDmaDomain();
      await this.driver.attachDevice(dev, domain);
      this.devices.set(fn.virtId, { dev, domain, pasids: new Map(), allocatedPasids: new Set() });
      this.log.append({
        source: "driver",
        kind: "attach",
        virtId: fn.virtId,
        text: `${fn.name} (${hex(fn.virtId)}): DMA domain ${domain.id} (tag ${domain.tag}), ATS ${dev.atsEnabled ? "on" : "off"}, PRI ${dev.priEnabled ? "on" : "off"}, ${dev.pasidBits} PASID bits`,
      });
    }
    this.booted = true;
  }

  /** Wait until queued page-request handling has finished. */
  settle(): Promise<void> {
    return this.faultWork;
  }

  private newDmaDomain(): DmaDomain {
    return {
      id: this.nextDomainId++,
      tag: this.driver.allocTag(),
      pgtable: new IoPgtable(this.driver.pgtableFormat, this.tables, this.driver.outputBits),
      kind: "dma",
      iovas: new RangeAllocator(IOVA_BASE, IOVA_END),
      buffers: new Map(),
    };
  }

  device(virtId: number): KDevice {
    const d = this.devices.get(virtId);
    if (!d) throw new ErrnoError("ENOENT", `no device ${hex(virtId)}`);
    return d;
  }

  process(pid: number): GuestProcess {
    const p = this.processes.get(pid);
    if (!p) throw new ErrnoError("ESRCH", `no process ${pid}`);
    return p;
  }

  private boundProcess(kd: KDevice, pasid: number): GuestProcess {
    const pid = kd.pasids.get(pasid);
    if (pid === undefined) throw new ErrnoError("ENOENT", `PASID ${pasid} of ${hex(kd.dev.fn.virtId)} is not bound`);
    return this.process(pid);
  }

  private usersOf(domain: Domain): DomainUser[] {
    const users: DomainUser[] = [];
    for (const kd of this.devices.values()) {
      if (kd.domain === domain) users.push({ dev: kd.dev });
      for (const [pasid, pid] of kd.pasids) if (this.processes.get(pid)?.domain === domain) users.push({ dev: kd.dev, pasid });
    }
    return users;
  }

  private allocPages(size: bigint): { gpa: bigint; zero: GuestRamOp | undefined } {
    const r = this.phys.alloc(size);
    if (!r) throw new ErrnoError("ENOMEM", "guest out of memory");
    return { gpa: r.gpa, zero: r.fresh ? undefined : { kind: "write", gpa: r.gpa, data: new Uint8Array(Number(r.bytes)) } };
  }

  // ---- DMA API ------------------------------------------------------------

  async dmaMap(req: { virtId: number; pasid?: number; length: bigint; prot: number; iova?: bigint; gpa?: bigint }): Promise<{ iova: bigint; gpa: bigint; length: bigint }> {
    return this.lock.run(async () => {
      const kd = this.device(req.virtId);
      if (req.prot & ~0x3f || (req.prot & (IOMMU_PROT.READ | IOMMU_PROT.WRITE)) === 0) throw new ErrnoError("EINVAL", `bad prot ${hex(req.prot)}`);
      const size = pageAlignUp(req.length);
      if (size === 0n) throw new ErrnoError("EINVAL", "length 0");
      if (req.iova !== undefined && (req.iova & (PAGE - 1n)) !== 0n) throw new ErrnoError("EINVAL", "iova not page aligned");
      if (req.gpa !== undefined) {
        if ((req.gpa & (PAGE - 1n)) !== 0n) throw new ErrnoError("EINVAL", "gpa not page aligned");
        if (!inRam(this.port.ram.regions, req.gpa, size)) throw new ErrnoError("EFAULT", `gpa ${hex(req.gpa)} is not RAM`);
      }
      const proc = req.pasid !== undefined ? this.boundProcess(kd, req.pasid) : undefined;
      const space = proc ? proc.vaSpace : kd.domain.iovas;
      const domain = proc ? proc.domain : kd.domain;
      const iova = req.iova ?? space.alloc(size);
      if (req.iova !== undefined) space.reserve(iova, size);
      let gpa = req.gpa;
      let zero: GuestRamOp | undefined;
      try {
        if (gpa === undefined) ({ gpa, zero } = this.allocPages(size));
        domain.pgtable.map(iova, gpa, size, dmaProtToPerms(req.prot));
      } catch (e) {
        space.release(iova, size);
        if (req.gpa === undefined && gpa !== undefined) this.phys.freeRange(gpa, size);
        throw e;
      }
      if (zero) await this.port.ram.batch([zero]);
      await this.driver.syncTables();
      if (proc) {
        proc.vmas.push({ start: iova, end: iova + size, prot: (req.prot & 3) | (req.prot & IOMMU_PROT.NOEXEC ? 0 : 4) });
        for (let a = 0n; a < size; a += PAGE) proc.pages.set(iova + a, gpa + a);
      } else {
        kd.domain.buffers.set(iova, { iova, gpa, size, owned: req.gpa === undefined });
      }
      this.counters.maps++;
      return { iova, gpa, length: size };
    });
  }

  async dmaUnmap(req: { virtId: number; pasid?: number; iova: bigint; length: bigint }): Promise<{ length: bigint; invalidations: IssuedInvalidation[] }> {
    return this.lock.run(async () => {
      const kd = this.device(req.virtId);
      const proc = req.pasid !== undefined ? this.boundProcess(kd, req.pasid) : undefined;
      const domain = proc ? proc.domain : kd.domain;
      const iova = req.iova & ~(PAGE - 1n);
      const size = pageAlignUp(req.iova + req.length) - iova;
      if (size === 0n) throw new ErrnoError("EINVAL", "length 0");
      const freedBefore = this.tables.freedSinceReclaim;
      const unmapped = domain.pgtable.unmap(iova, size);
      if (unmapped === 0n) throw new ErrnoError("ENOENT", `nothing mapped at ${hex(iova)}`);
      const leaf = this.tables.freedSinceReclaim === freedBefore;
      const invalidations = await this.driver.invalidateRange(domain, this.usersOf(domain), iova, size, leaf);
      this.tables.reclaim();
      if (proc) {
        for (let a = 0n; a < size; a += PAGE) proc.pages.delete(iova + a);
        proc.vaSpace.release(iova, size);
      } else {
        kd.domain.iovas.release(iova, size);
        for (const [k, b] of kd.domain.buffers) {
          if (b.iova >= iova && b.iova + b.size <= iova + size) {
            kd.domain.buffers.delete(k);
            if (b.owned) this.phys.freeRange(b.gpa, b.size);
          }
        }
      }
      this.counters.unmaps++;
      this.counters.invalidationCommands += invalidations.length;
      return { length: unmapped, invalidations };
    });
  }

  // ---- SVA ----------------------------------------------------------------

  createProcess(): GuestProcess {
    const domain: Domain = {
      id: this.nextDomainId++,
      tag: this.driver.allocTag(),
      pgtable: new IoPgtable(this.driver.pgtableFormat, this.tables, this.driver.outputBits),
      kind: "sva",
    };
    const p = new GuestProcess(this.nextPid++, domain);
    this.processes.set(p.pid, p);
    return p;
  }

  async bind(virtId: number, pid?: number, pasid?: number): Promise<{ pid: number; pasid: number; invalidations: IssuedInvalidation[] }> {
    return this.lock.run(async () => {
      const kd = this.device(virtId);
      const proc = pid !== undefined ? this.process(pid) : undefined;
      if (kd.dev.pasidBits === 0) throw new ErrnoError("EOPNOTSUPP", `${hex(virtId)} has no PASID support`);
      let p = pasid;
      if (p !== undefined) {
        if (p <= 0 || p >= 2 ** kd.dev.pasidBits) throw new ErrnoError("EINVAL", `PASID ${p} out of range (${kd.dev.pasidBits} bits)`);
        if (kd.pasids.has(p)) throw new ErrnoError("EBUSY", `PASID ${p} already bound`);
        if (this.driver instanceof VtdGuestDriver) this.driver.claimPasid(p);
      } else {
        do {
          p = await this.driver.allocPasid(kd.dev);
          kd.allocatedPasids.add(p);
        } while (kd.pasids.has(p));
      }
      const process = proc ?? this.createProcess();
      const invalidations = await this.driver.setPasid(kd.dev, p, process.domain);
      kd.pasids.set(p, process.pid);
      process.bindings.add(`${virtId}/${p}`);
      this.log.append({ source: "driver", kind: "sva bind", virtId, pasid: p, text: `SVA: pid ${process.pid} bound to ${hex(virtId)} PASID ${p}` });
      return { pid: process.pid, pasid: p, invalidations };
    });
  }

  async unbind(virtId: number, pasid: number): Promise<IssuedInvalidation[]> {
    return this.lock.run(async () => {
      const kd = this.device(virtId);
      const proc = this.boundProcess(kd, pasid);
      const invalidations = await this.driver.clearPasid(kd.dev, pasid, proc.domain);
      kd.pasids.delete(pasid);
      proc.bindings.delete(`${virtId}/${pasid}`);
      if (kd.allocatedPasids.delete(pasid)) await this.driver.freePasid(pasid);
      this.log.append({ source: "driver", kind: "sva unbind", virtId, pasid, text: `SVA: pid ${proc.pid} unbound from ${hex(virtId)} PASID ${pasid}` });
      return invalidations;
    });
  }

  processMmap(pid: number, length: bigint, prot: number, va?: bigint): bigint {
    const p = this.process(pid);
    const size = pageAlignUp(length);
    if (size === 0n) throw new ErrnoError("EINVAL", "length 0");
    if (prot & ~7) throw new ErrnoError("EINVAL", `bad prot ${prot}`);
    let start: bigint;
    if (va !== undefined) {
      if ((va & (PAGE - 1n)) !== 0n) throw new ErrnoError("EINVAL", "va not page aligned");
      if (p.vmas.some((v) => va < v.end && v.start < va + size)) throw new ErrnoError("EEXIST", `VMA overlap at ${hex(va)}`);
      start = va;
      p.vaSpace.reserve(start, size);
    } else {
      start = p.vaSpace.alloc(size);
    }
    p.vmas.push({ start, end: start + size, prot });
    return start;
  }

  /** Fault a page in (caller holds the lock). Returns whether it was newly populated; throws EFAULT on a bad access. */
  private faultIn(p: GuestProcess, va: bigint, access: { read: boolean; write: boolean; exec: boolean }, zeros: GuestRamOp[]): boolean {
    const page = va & ~(PAGE - 1n);
    const vma = p.vmaAt(page);
    if (!vma) throw new ErrnoError("EFAULT", `pid ${p.pid}: no VMA at ${hex(va)}`);
    if ((access.write && !(vma.prot & 2)) || (access.read && !(vma.prot & 3)) || (access.exec && !(vma.prot & 4))) {
      throw new ErrnoError("EFAULT", `pid ${p.pid}: access not allowed at ${hex(va)}`);
    }
    if (p.pages.has(page)) return false;
    const { gpa, zero } = this.allocPages(PAGE);
    if (zero) zeros.push(zero);
    p.domain.pgtable.map(page, gpa, PAGE, userProtToPerms(vma.prot));
    p.pages.set(page, gpa);
    return true;
  }

  async touch(pid: number, va: bigint, length: bigint, write: boolean): Promise<bigint> {
    return this.lock.run(async () => {
      const p = this.process(pid);
      const zeros: GuestRamOp[] = [];
      let n = 0n;
      const end = va + (length === 0n ? 1n : length);
      for (let a = va & ~(PAGE - 1n); a < end; a += PAGE) if (this.faultIn(p, a, { read: !write, write, exec: false }, zeros)) n++;
      if (zeros.length) await this.port.ram.batch(zeros);
      await this.driver.syncTables();
      return n;
    });
  }

  // ---- memory access --------------------------------------------------------

  private processRanges(pid: number, va: bigint, length: number): { gpa: bigint; len: number }[] {
    const p = this.process(pid);
    const out: { gpa: bigint; len: number }[] = [];
    let done = 0;
    while (done < length) {
      const a = va + BigInt(done);
      const page = a & ~(PAGE - 1n);
      const gpa = p.pages.get(page);
      if (gpa === undefined) throw new ErrnoError("EFAULT", `pid ${pid}: ${hex(a)} is not populated`);
      const off = Number(a - page);
      const n = Math.min(length - done, 4096 - off);
      out.push({ gpa: gpa + BigInt(off), len: n });
      done += n;
    }
    return out;
  }

  async readMemory(target: { gpa: bigint } | { pid: number; va: bigint }, length: number): Promise<Uint8Array> {
    if ("gpa" in target) {
      if (!inRam(this.port.ram.regions, target.gpa, BigInt(length))) throw new ErrnoError("EFAULT", `${hex(target.gpa)} is not RAM`);
      const [d] = await this.port.ram.batch([{ kind: "read", gpa: target.gpa, length }]);
      return d as Uint8Array;
    }
    const ranges = this.processRanges(target.pid, target.va, length);
    const parts = await this.port.ram.batch(ranges.map((r) => ({ kind: "read" as const, gpa: r.gpa, length: r.len })));
    const out = new Uint8Array(length);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  async writeMemory(target: { gpa: bigint } | { pid: number; va: bigint }, data: Uint8Array): Promise<void> {
    if ("gpa" in target) {
      if (!inRam(this.port.ram.regions, target.gpa, BigInt(data.length))) throw new ErrnoError("EFAULT", `${hex(target.gpa)} is not RAM`);
      await this.port.ram.batch([{ kind: "write", gpa: target.gpa, data }]);
      return;
    }
    const ranges = this.processRanges(target.pid, target.va, data.length);
    let o = 0;
    await this.port.ram.batch(
      ranges.map((r) => {
        const op: GuestRamOp = { kind: "write", gpa: r.gpa, data: data.subarray(o, o + r.len) };
        o += r.len;
        return op;
      }),
    );
  }

  // ---- I/O page faults ------------------------------------------------------

  /** Resolve a page request group: fault the pages into the bound process, then answer (Linux iommu_sva_handle_iopf). */
  private async handlePageRequests(group: PageRequestRecord[]): Promise<void> {
    const last = group[group.length - 1] as PageRequestRecord;
    this.counters.pageRequests += group.length;
    for (const r of group) {
      this.log.append({
        source: "page-request",
        kind: "page request",
        virtId: r.virtId,
        ...(r.pasid !== undefined ? { pasid: r.pasid } : {}),
        addr: r.addr,
        text: `page request ${hex(r.virtId)} pasid ${r.pasid ?? "-"} addr ${hex(r.addr)} ${r.read ? "r" : "-"}${r.write ? "w" : "-"}${r.exec ? "x" : "-"}${r.priv ? " priv" : ""} prgi ${r.prgi}${r.last ? " last" : ""}`,
      });
    }
    const kd = this.devices.get(last.virtId);
    if (!kd) {
      this.log.append({ source: "driver", kind: "iopf", virtId: last.virtId, text: `page request from unknown device ${hex(last.virtId)}` });
      return;
    }
    await this.lock.run(async () => {
      let ok = true;
      let why = "";
      const zeros: GuestRamOp[] = [];
      let populated = 0;
      for (const r of group) {
        try {
          if (r.pasid === undefined) throw new ErrnoError("EFAULT", "request without PASID: the DMA domain does not page on demand");
          const p = this.boundProcess(kd, r.pasid);
          if (r.priv) throw new ErrnoError("EFAULT", "privileged request to a user address space");
          if (this.faultIn(p, r.addr, { read: r.read, write: r.write, exec: r.exec }, zeros)) populated++;
        } catch (e) {
          ok = false;
          why = e instanceof Error ? e.message : String(e);
        }
      }
      if (zeros.length) await this.port.ram.batch(zeros);
      await this.driver.syncTables();
      this.counters.pagesFaultedIn += populated;
      await this.driver.pageResponse(kd.dev, last.pasid, last.prgi, ok);
      this.counters.pageResponses++;
      this.log.append({
        source: "page-request",
        kind: ok ? "page response SUCCESS" : "page response INVALID",
        virtId: last.virtId,
        ...(last.pasid !== undefined ? { pasid: last.pasid } : {}),
        addr: last.addr,
        text: `page response ${ok ? "success" : `invalid (${why})`} for ${hex(last.virtId)} pasid ${last.pasid ?? "-"} prgi ${last.prgi}, ${populated} page(s) faulted in`,
      });
    });
  }
}
