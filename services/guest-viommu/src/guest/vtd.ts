// The guest's Intel VT-d driver, scalable mode (Linux intel-iommu in
// miniature). It knows only the remapping unit's registers and what it keeps
// in guest RAM: the root table, scalable-mode context tables, a PASID
// directory and PASID tables per device, the invalidation queue (256-bit
// descriptors, kernel memory) and the page request queue (written by the
// IOMMU). Domains are first-stage (PGTT = 001b, x86-64 4-level tables,
// pgtable.ts); the VMM runs them nested over the host's second stage.
//
// Ordering (DESIGN §3): table changes and descriptors go to guest RAM in one
// awaited batch before IQT is written; every submission ends with an
// invalidation wait descriptor (status write) the driver polls for.
//
// Spec: VT-d 3.x §6.5 (invalidation), §7.5 (page requests), §9 (tables),
// §10/§11 (registers); reference/hw-formats.md §2.
import {
  CAP_FIELDS,
  CC_GRAN,
  CC_INV_DESC,
  ECAP_FIELDS,
  FLPM,
  FSTS_FIELDS,
  GCMD_FIELDS,
  GSTS_FIELDS,
  INV_DESC_TYPE,
  IOTLB_GRAN,
  IOTLB_INV_DESC,
  IQA_FIELDS,
  IQERCD_FIELDS,
  PC_GRAN,
  PC_INV_DESC,
  PGRP_RESP_DESC,
  PGTT,
  PIOTLB_GRAN,
  PIOTLB_INV_DESC,
  PQA_FIELDS,
  PRG_RESPONSE_CODE,
  PRS_FIELDS,
  RTADDR_FIELDS,
  VTD_REG,
  VTD_TTM,
  WAIT_INV_DESC,
  bytesToWords,
  decodeFaultRecord,
  decodeInvDesc,
  decodePageRequest,
  devtlbDesc,
  encodeInvDesc,
  encodePasidDirEntry,
  encodeSmContextEntry,
  encodeSmPasidEntry,
  encodeSmRootEntry,
  getNum,
  isStopMarker,
  pack,
  pasidIndices,
  vtdAmFor,
  vtdFaultReasonName,
} from "@iommufd/hw";
import { ErrnoError } from "@iommufd/kit";
import { Mutex, hex, sleep } from "../util.js";
import { VCCAP_PAS, VCMD_CMD, VCMD_REG, vcrspStatus } from "../vtd-vcmd.js";
import type { Domain, DomainUser, DriverCallbacks, GuestDevice, GuestIommuDriver, IssuedInvalidation, PageRequestRecord } from "./iommu.js";
import type { KernelMemory, PhysAllocator, TableAllocator } from "./kmem.js";
import type { IrqLine, VirtualIommuPort } from "./port.js";
import type { GuestRamOp } from "./ram.js";

/** Invalidation queue: 2^IQ_QS pages of 32-byte descriptors. */
const IQ_QS = 2;
const IQ_DESC_BYTES = 32;
/** Page request queue: 2^PQ_QS pages of 32-byte descriptors. */
const PQ_QS = 0;
/** Requests without PASID use this PASID's entry (Linux IOMMU_NO_PASID). */
export const RID_PASID = 0;
/** DID for pass-through entries (Linux FLPT_DEFAULT_DID). */
const PT_DID = 1;
/** Largest AM the driver uses before falling back to a PASID-wide flush. */
const MAX_AM = 18;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

interface Caps {
  fro: number;
  nfr: number;
  haw: number;
  pasid: boolean;
  pasidBits: number;
  prs: boolean;
  dt: boolean;
  vcs: boolean;
}

interface DeviceCfg {
  dir: bigint;
  pdts: number;
  tables: Map<number, bigint>;
  context: bigint[];
  attachedOnce: boolean;
}

function descText(w: readonly bigint[]): { kind: string; text: string } {
  const d = decodeInvDesc(w, true);
  if (!d.ok) return { kind: "INVALID", text: `invalid descriptor ${w.map((x) => hex(x)).join(" ")}` };
  const x = d.desc;
  switch (x.type) {
    case "pasid-iotlb":
      return { kind: "PASID-IOTLB", text: `PASID-IOTLB did ${x.did} pasid ${x.pasid} ${x.g === PIOTLB_GRAN.PAGE ? `addr ${hex(x.addr)} am ${x.am} ih ${x.ih ? 1 : 0}` : "all"}` };
    case "pasid-cache":
      return { kind: "PASID-CACHE", text: `PASID-cache g ${x.g} did ${x.did} pasid ${x.pasid}` };
    case "context-cache":
      return { kind: "CONTEXT-CACHE", text: `context-cache g ${x.g} sid ${hex(x.sid)}` };
    case "device-tlb":
      return { kind: "DEVICE-TLB", text: `device-TLB sid ${hex(x.sid)} addr ${hex(x.addr)} s ${x.s ? 1 : 0}` };
    case "pasid-device-tlb":
      return { kind: "PASID-DEVICE-TLB", text: `PASID device-TLB sid ${hex(x.sid)} pasid ${x.pasid} addr ${hex(x.addr)} s ${x.s ? 1 : 0}` };
    case "iotlb":
      return { kind: "IOTLB", text: `IOTLB g ${x.g} did ${x.did}` };
    case "wait":
      return { kind: "WAIT", text: `wait sw ${x.sw ? 1 : 0} data ${x.sdata}` };
    case "page-group-response":
      return { kind: "PAGE-GROUP-RESPONSE", text: `page group response rid ${hex(x.rid)} pasid ${x.pp ? x.pasid : "-"} prgi ${x.prgi} rc ${x.rc}` };
    default:
      return { kind: x.type.toUpperCase(), text: x.type };
  }
}

export class VtdGuestDriver implements GuestIommuDriver {
  readonly vendor = "vtd" as const;
  readonly pgtableFormat = "vtd-fs" as const;
  outputBits = 48;
  private caps!: Caps;
  private gcmd = 0;
  private rta = 0n;
  private iq!: { base: bigint; entries: number; tail: number };
  private prq?: { base: bigint; bytes: number };
  private statusAddr = 0n;
  private statusSeq = 0;
  private readonly ctxTables = new Map<string, bigint>();
  private readonly devices = new Map<number, DeviceCfg>();
  private readonly qiLock = new Mutex();
  private readonly prqLock = new Mutex();
  private readonly faultLock = new Mutex();
  private readonly dids = new Set<number>([0, PT_DID]);
  private readonly localPasids = new Set<number>();
  private readonly partialGroups = new Map<string, PageRequestRecord[]>();
  /** Queue errors seen (IQE / ITE / ICE), for tests and logs. */
  readonly qiErrors: string[] = [];

  constructor(
    private readonly port: VirtualIommuPort,
    private readonly kmem: KernelMemory,
    private readonly tables: TableAllocator,
    private readonly phys: PhysAllocator,
    private readonly cb: DriverCallbacks,
  ) {}

  private async r32(off: number): Promise<number> {
    return Number((await this.port.mmio.read(off, 4)) & 0xffff_ffffn);
  }

  private r64(off: number): Promise<bigint> {
    return this.port.mmio.read(off, 8);
  }

  private w32(off: number, v: number): Promise<void> {
    return this.port.mmio.write(off, BigInt(v >>> 0), 4);
  }

  private w64(off: number, v: bigint): Promise<void> {
    return this.port.mmio.write(off, v, 8);
  }

  private async ram(ops: GuestRamOp[]): Promise<void> {
    if (ops.length > 0) await this.port.ram.batch(ops);
  }

  private allocOwned(bytes: bigint): bigint {
    const r = this.phys.alloc(bytes);
    if (!r) throw new ErrnoError("ENOMEM", "guest out of memory for IOMMU structures");
    this.kmem.own(r.gpa, r.bytes, r.fresh);
    return r.gpa;
  }

  /** Set a GCMD bit (or pulse a one-shot one) and wait for its GSTS status (§10.4.4). */
  private async gcmdSet(bit: keyof typeof GCMD_FIELDS, status: keyof typeof GSTS_FIELDS, oneShot = false): Promise<void> {
    const v = Number(pack(GCMD_FIELDS, 1, { [bit]: 1 })[0]);
    if (!oneShot) this.gcmd |= v;
    await this.w32(VTD_REG.GCMD, this.gcmd | v);
    const mask = Number(pack(GSTS_FIELDS, 1, { [status]: 1 })[0]);
    for (let i = 0; i < 1000; i++) {
      if ((await this.r32(VTD_REG.GSTS)) & mask) return;
      await sleep(1);
    }
    throw new ErrnoError("ETIMEDOUT", `GSTS.${status} did not set`);
  }

  async probe(): Promise<void> {
    const cap = [await this.r64(VTD_REG.CAP)];
    const ecap = [await this.r64(VTD_REG.ECAP)];
    const e = (f: keyof typeof ECAP_FIELDS) => getNum(ecap, ECAP_FIELDS[f]);
    if (!e("SMTS")) throw new ErrnoError("ENODEV", "VT-d without scalable mode");
    if (!e("FSTS")) throw new ErrnoError("ENODEV", "VT-d without first-stage translation");
    if (!e("QI")) throw new ErrnoError("ENODEV", "VT-d without queued invalidation");
    let vcs = e("VCS") === 1;
    if (vcs) vcs = ((await this.r64(VCMD_REG.VCCAP)) & VCCAP_PAS) !== 0n;
    this.caps = {
      fro: getNum(cap, CAP_FIELDS.FRO) * 16,
      nfr: getNum(cap, CAP_FIELDS.NFR) + 1,
      haw: getNum(cap, CAP_FIELDS.MGAW) + 1,
      pasid: e("PASID") === 1,
      pasidBits: e("PASID") ? e("PSS") + 1 : 0,
      prs: e("PRS") === 1,
      dt: e("DT") === 1,
      vcs,
    };
    this.outputBits = Math.min(this.caps.haw, 48);

    this.rta = this.allocOwned(4096n);
    const iqBytes = 4096n << BigInt(IQ_QS);
    this.iq = { base: this.allocOwned(iqBytes), entries: Number(iqBytes) / IQ_DESC_BYTES, tail: 0 };
    const st = this.phys.alloc(4096n);
    if (!st) throw new ErrnoError("ENOMEM", "no memory for the wait status page");
    this.statusAddr = st.gpa;
    await this.ram([...this.kmem.drain(), { kind: "write", gpa: this.statusAddr, data: new Uint8Array(8) }]);

    await this.w64(VTD_REG.RTADDR, pack(RTADDR_FIELDS, 1, { RTA: this.rta >> 12n, TTM: VTD_TTM.SCALABLE })[0] as bigint);
    await this.gcmdSet("SRTP", "RTPS", true);
    await this.w64(VTD_REG.IQT, 0n);
    await this.w64(VTD_REG.IQA, pack(IQA_FIELDS, 1, { IQA: this.iq.base >> 12n, DW: 1, QS: IQ_QS })[0] as bigint);
    await this.gcmdSet("QIE", "QIES");
    if (this.caps.prs) {
      const pq = this.phys.alloc(4096n << BigInt(PQ_QS));
      if (!pq) throw new ErrnoError("ENOMEM", "no memory for the page request queue");
      this.prq = { base: pq.gpa, bytes: 4096 << PQ_QS };
      await this.w64(VTD_REG.PQH, 0n);
      await this.w64(VTD_REG.PQT, 0n);
      await this.w64(VTD_REG.PQA, pack(PQA_FIELDS, 1, { PQA: this.prq.base >> 12n, PQS: PQ_QS })[0] as bigint);
      await this.w32(VTD_REG.PECTL, 0);
    }
    await this.w32(VTD_REG.FECTL, 0);
    await this.qiLock.run(() =>
      this.submit([
        encodeInvDesc(INV_DESC_TYPE.CONTEXT_CACHE, CC_INV_DESC, { G: CC_GRAN.GLOBAL }),
        encodeInvDesc(INV_DESC_TYPE.PASID_CACHE, PC_INV_DESC, { G: PC_GRAN.GLOBAL }),
        encodeInvDesc(INV_DESC_TYPE.IOTLB, IOTLB_INV_DESC, { G: IOTLB_GRAN.GLOBAL, DR: 1, DW: 1 }),
      ]),
    );
    await this.gcmdSet("TE", "TES");
    this.cb.log({
      source: "driver",
      kind: "probe",
      text:
        `intel-iommu: scalable mode, first-stage, HAW ${this.caps.haw}, PASID ${this.caps.pasid ? `${this.caps.pasidBits} bits` : "off"}, ` +
        `PRS ${this.caps.prs ? "on" : "off"}, device TLB ${this.caps.dt ? "on" : "off"}, virtual command ${this.caps.vcs ? "on" : "off"}, ` +
        `${this.caps.nfr} fault records`,
    });
  }

  // ---- root / context / PASID tables ------------------------------------

  private contextEntryAddr(rid: number): bigint {
    const bus = (rid >> 8) & 0xff;
    const devfn = rid & 0xff;
    const half = devfn >= 128 ? "u" : "l";
    let t = this.ctxTables.get(`${bus}:${half}`);
    if (t === undefined) {
      t = this.allocOwned(4096n);
      this.ctxTables.set(`${bus}:${half}`, t);
      const lctp = this.ctxTables.get(`${bus}:l`);
      const uctp = this.ctxTables.get(`${bus}:u`);
      this.kmem.writeWords(this.rta + BigInt(bus * 16), encodeSmRootEntry({ ...(lctp !== undefined ? { lctp } : {}), ...(uctp !== undefined ? { uctp } : {}) }));
    }
    return t + BigInt((devfn & 0x7f) * 32);
  }

  private deviceCfg(dev: GuestDevice): DeviceCfg {
    let c = this.devices.get(dev.fn.virtId);
    if (!c) {
      dev.atsEnabled = dev.fn.ats && this.caps.dt;
      dev.priEnabled = dev.fn.pri && this.caps.prs && dev.atsEnabled && this.prq !== undefined;
      dev.pasidBits = this.caps.pasid ? Math.min(dev.fn.maxPasidLog2, this.caps.pasidBits) : 0;
      // PDTS: the directory has 2^(PDTS+7) entries of 64 PASIDs each.
      const pdts = Math.min(7, Math.max(0, dev.pasidBits - 6 - 7));
      const dir = this.allocOwned(8n << BigInt(pdts + 7));
      const context = encodeSmContextEntry({
        P: 1,
        DTE: dev.atsEnabled ? 1 : 0,
        PASIDE: 1,
        PRE: dev.priEnabled ? 1 : 0,
        PDTS: pdts,
        PASIDDIRPTR: dir,
        RID_PASID: RID_PASID,
      });
      c = { dir, pdts, tables: new Map(), context, attachedOnce: false };
      this.devices.set(dev.fn.virtId, c);
    }
    return c;
  }

  private pasidEntryAddr(c: DeviceCfg, pasid: number): bigint {
    const { dir, table } = pasidIndices(pasid);
    if (dir >= 2 ** (c.pdts + 7)) throw new ErrnoError("EINVAL", `PASID ${pasid} beyond the PASID directory`);
    let t = c.tables.get(dir);
    if (t === undefined) {
      t = this.allocOwned(4096n);
      c.tables.set(dir, t);
      this.kmem.writeWords(c.dir + BigInt(dir * 8), [encodePasidDirEntry(t)]);
    }
    return t + BigInt(table * 64);
  }

  private fsPasidEntry(domain: Domain): bigint[] {
    return encodeSmPasidEntry({ P: 1, PGTT: PGTT.FIRST_STAGE, FSPTPTR: domain.pgtable.root, FLPM: FLPM.LEVEL4, DID: domain.tag });
  }

  private pasidCacheDesc(did: number, pasid: number): bigint[] {
    return encodeInvDesc(INV_DESC_TYPE.PASID_CACHE, PC_INV_DESC, { G: PC_GRAN.PASID, DID: did, PASID: pasid });
  }

  private piotlbAll(did: number, pasid: number): bigint[] {
    return encodeInvDesc(INV_DESC_TYPE.PASID_IOTLB, PIOTLB_INV_DESC, { G: PIOTLB_GRAN.PASID, DID: did, PASID: pasid });
  }

  async attachDevice(dev: GuestDevice, target: Domain | "identity" | "blocked"): Promise<IssuedInvalidation[]> {
    return this.qiLock.run(async () => {
      const c = this.deviceCfg(dev);
      const rid = dev.fn.virtId;
      this.kmem.writeWords(this.contextEntryAddr(rid), c.context);
      const entry =
        target === "blocked"
          ? new Array<bigint>(8).fill(0n)
          : target === "identity"
            ? encodeSmPasidEntry({ P: 1, PGTT: PGTT.PASS_THROUGH, DID: PT_DID, AW: 2 })
            : this.fsPasidEntry(target);
      this.kmem.writeWords(this.pasidEntryAddr(c, RID_PASID), entry);
      const did = typeof target === "object" ? target.tag : PT_DID;
      const descs = [
        encodeInvDesc(INV_DESC_TYPE.CONTEXT_CACHE, CC_INV_DESC, { G: CC_GRAN.DEVICE, DID: did, SID: rid }),
        this.pasidCacheDesc(did, RID_PASID),
        this.piotlbAll(did, RID_PASID),
      ];
      if (c.attachedOnce && dev.atsEnabled) descs.push(devtlbDesc(rid, undefined, 0n, 0n, true));
      c.attachedOnce = true;
      return this.submit(descs);
    });
  }

  async setPasid(dev: GuestDevice, pasid: number, domain: Domain): Promise<IssuedInvalidation[]> {
    return this.qiLock.run(async () => {
      const c = this.deviceCfg(dev);
      if (pasid <= RID_PASID || pasid >= 2 ** dev.pasidBits) throw new ErrnoError("EINVAL", `PASID ${pasid} out of range`);
      this.kmem.writeWords(this.pasidEntryAddr(c, pasid), this.fsPasidEntry(domain));
      return this.submit([this.pasidCacheDesc(domain.tag, pasid), this.piotlbAll(domain.tag, pasid)]);
    });
  }

  async clearPasid(dev: GuestDevice, pasid: number, domain: Domain): Promise<IssuedInvalidation[]> {
    return this.qiLock.run(async () => {
      const c = this.deviceCfg(dev);
      this.kmem.writeWords(this.pasidEntryAddr(c, pasid), new Array<bigint>(8).fill(0n));
      const descs = [this.pasidCacheDesc(domain.tag, pasid), this.piotlbAll(domain.tag, pasid)];
      if (dev.atsEnabled) descs.push(devtlbDesc(dev.fn.virtId, pasid, 0n, 0n, true));
      // Linux intel_drain_pasid_prq: a wait with PD (page-request drain) after teardown.
      return this.submit(descs, { drain: true });
    });
  }

  async invalidateRange(domain: Domain, users: readonly DomainUser[], iova: bigint, size: bigint, leaf: boolean): Promise<IssuedInvalidation[]> {
    return this.qiLock.run(async () => {
      const { addr, am } = vtdAmFor(iova, size);
      const npages = am > MAX_AM ? U64_MAX : size >> 12n;
      const descs: bigint[][] = [];
      const pasids = new Set(users.map((u) => u.pasid ?? RID_PASID));
      if (pasids.size === 0) pasids.add(RID_PASID);
      for (const p of pasids) {
        if (npages === U64_MAX) descs.push(this.piotlbAll(domain.tag, p));
        else
          descs.push(
            encodeInvDesc(INV_DESC_TYPE.PASID_IOTLB, PIOTLB_INV_DESC, { G: PIOTLB_GRAN.PAGE, DID: domain.tag, PASID: p, AM: am, IH: leaf ? 1 : 0, ADDR: addr >> 12n }),
          );
      }
      const seen = new Set<string>();
      for (const u of users) {
        if (!u.dev.atsEnabled) continue;
        const key = `${u.dev.fn.virtId}/${u.pasid ?? "-"}`;
        if (seen.has(key)) continue;
        seen.add(key);
        const all = npages === U64_MAX;
        descs.push(devtlbDesc(u.dev.fn.virtId, u.pasid, addr, 4096n << BigInt(am), all));
      }
      return this.submit(descs);
    });
  }

  async syncTables(): Promise<void> {
    await this.qiLock.run(() => this.ram(this.kmem.drain()));
  }

  async pageResponse(dev: GuestDevice, pasid: number | undefined, prgi: number, ok: boolean): Promise<void> {
    const desc = encodeInvDesc(INV_DESC_TYPE.PAGE_GROUP_RESPONSE, PGRP_RESP_DESC, {
      PP: pasid !== undefined ? 1 : 0,
      RC: ok ? PRG_RESPONSE_CODE.SUCCESS : PRG_RESPONSE_CODE.INVALID_REQUEST,
      RID: dev.fn.virtId,
      PASID: pasid ?? 0,
      LPIG: 1,
      PRGI: prgi,
    });
    await this.qiLock.run(() => this.submit([desc]));
  }

  async allocPasid(dev: GuestDevice): Promise<number> {
    const limit = 2 ** dev.pasidBits;
    if (this.caps.vcs) {
      // Virtual command: the VMM owns the PASID space (one command at a time).
      return this.qiLock.run(async () => {
        await this.w64(VCMD_REG.VCMD, BigInt(VCMD_CMD.ALLOC));
        for (let i = 0; i < 1000; i++) {
          const r = vcrspStatus(await this.r64(VCMD_REG.VCRSP));
          if (r.inProgress) {
            await sleep(1);
            continue;
          }
          if (r.sc !== 0) throw new ErrnoError("ENOSPC", "virtual command: no PASID available");
          const pasid = Number(r.result);
          if (pasid >= limit) {
            await this.w64(VCMD_REG.VCMD, (BigInt(pasid) << 8n) | BigInt(VCMD_CMD.FREE));
            throw new ErrnoError("ENOSPC", `virtual command PASID ${pasid} beyond the device's ${dev.pasidBits} bits`);
          }
          return pasid;
        }
        throw new ErrnoError("ETIMEDOUT", "virtual command did not complete");
      });
    }
    for (let p = 1; p < limit; p++) {
      if (!this.localPasids.has(p)) {
        this.localPasids.add(p);
        return p;
      }
    }
    throw new ErrnoError("ENOSPC", "no free PASID");
  }

  async freePasid(pasid: number): Promise<void> {
    if (!this.caps.vcs) {
      this.localPasids.delete(pasid);
      return;
    }
    await this.qiLock.run(() => this.w64(VCMD_REG.VCMD, (BigInt(pasid) << 8n) | BigInt(VCMD_CMD.FREE)));
  }

  allocTag(): number {
    for (let d = 2; d < 0x10000; d++) {
      if (!this.dids.has(d)) {
        this.dids.add(d);
        return d;
      }
    }
    throw new ErrnoError("ENOSPC", "no free domain ID");
  }

  freeTag(tag: number): void {
    if (tag > PT_DID) this.dids.delete(tag);
  }

  /** Queue guest-claimed PASIDs (bind with an explicit PASID) with the local allocator. */
  claimPasid(pasid: number): void {
    if (!this.caps.vcs) this.localPasids.add(pasid);
  }

  // ---- invalidation queue -----------------------------------------------

  /** Submit descriptors plus a wait descriptor and poll its status write. Caller holds qiLock. */
  private async submit(descs: bigint[][], opts: { drain?: boolean } = {}): Promise<IssuedInvalidation[]> {
    const issued: IssuedInvalidation[] = [];
    const status = (this.statusSeq = (this.statusSeq + 1) >>> 0 || 1);
    const wait = encodeInvDesc(INV_DESC_TYPE.WAIT, WAIT_INV_DESC, { SW: 1, FN: 1, PD: opts.drain ? 1 : 0, SDATA: status, SADDR: this.statusAddr >> 2n });
    for (const d of [...descs, wait]) {
      this.kmem.writeWords(this.iq.base + BigInt(this.iq.tail * IQ_DESC_BYTES), d);
      this.iq.tail = (this.iq.tail + 1) % this.iq.entries;
      issued.push({ ...descText(d), words: [...d] });
    }
    await this.ram(this.kmem.drain());
    await this.w64(VTD_REG.IQT, BigInt(this.iq.tail * IQ_DESC_BYTES));
    let failure: ErrnoError | undefined;
    for (let i = 0; i < 2000; i++) {
      const [st] = await this.port.ram.batch([{ kind: "read", gpa: this.statusAddr, length: 4 }]);
      if (new DataView((st as Uint8Array).buffer, (st as Uint8Array).byteOffset).getUint32(0, true) === status) {
        if (failure) throw failure;
        return issued;
      }
      const fsts = [BigInt(await this.r32(VTD_REG.FSTS))];
      if (getNum(fsts, FSTS_FIELDS.IQE)) {
        // Linux qi_check_fault: report, overwrite the bad descriptor with the wait descriptor, clear IQE.
        const rec = [await this.r64(VTD_REG.IQERCD)];
        const head = Number((await this.r64(VTD_REG.IQH)) & 0x7fff0n) / IQ_DESC_BYTES;
        const bad = this.kmem.readWords(this.iq.base + BigInt(head * IQ_DESC_BYTES), 4);
        const msg = `invalidation queue error IQEI ${getNum(rec, IQERCD_FIELDS.IQEI)} at descriptor ${bad.map((x) => hex(x)).join(" ")}`;
        this.qiErrors.push(msg);
        this.cb.log({ source: "driver", kind: "IQE", raw: bad, text: `intel-iommu: ${msg}` });
        failure ??= new ErrnoError("EIO", msg);
        this.kmem.writeWords(this.iq.base + BigInt(head * IQ_DESC_BYTES), wait);
        await this.ram(this.kmem.drain());
        await this.w32(VTD_REG.FSTS, Number(pack(FSTS_FIELDS, 1, { IQE: 1 })[0]));
        continue;
      }
      if (getNum(fsts, FSTS_FIELDS.ITE)) {
        const msg = "device-TLB invalidation timed out (ITE)";
        this.qiErrors.push(msg);
        this.cb.log({ source: "driver", kind: "ITE", text: `intel-iommu: ${msg}` });
        failure ??= new ErrnoError("ETIMEDOUT", msg);
        await this.w32(VTD_REG.FSTS, Number(pack(FSTS_FIELDS, 1, { ITE: 1 })[0]));
        continue;
      }
      await sleep(i < 10 ? 0 : 2);
    }
    throw new ErrnoError("ETIMEDOUT", "invalidation wait descriptor did not complete");
  }

  // ---- interrupts: page requests, faults ---------------------------------

  async handleIrq(line: IrqLine): Promise<void> {
    if (line === "prq") await this.prqLock.run(() => this.drainPrq());
    else if (line === "fault") await this.faultLock.run(() => this.drainFaults());
  }

  private async drainPrq(): Promise<void> {
    const q = this.prq;
    if (!q) return;
    const head = Number((await this.r64(VTD_REG.PQH)) & 0x7ffe0n);
    const tail = Number((await this.r64(VTD_REG.PQT)) & 0x7ffe0n);
    const groups: PageRequestRecord[][] = [];
    if (head !== tail) {
      const ops: GuestRamOp[] =
        tail > head
          ? [{ kind: "read", gpa: q.base + BigInt(head), length: tail - head }]
          : [
              { kind: "read", gpa: q.base + BigInt(head), length: q.bytes - head },
              ...(tail > 0 ? [{ kind: "read" as const, gpa: q.base, length: tail }] : []),
            ];
      const words = (await this.port.ram.batch(ops)).flatMap((d) => bytesToWords(d));
      for (let i = 0; i + 4 <= words.length; i += 4) {
        const w = words.slice(i, i + 4);
        const r = decodePageRequest(w);
        if (isStopMarker(r)) {
          this.cb.log({ source: "page-request", kind: "stop marker", virtId: r.rid, ...(r.pasid !== undefined ? { pasid: r.pasid } : {}), raw: w, text: `PRQ stop marker rid ${hex(r.rid)}` });
          continue;
        }
        const key = `${r.rid}/${r.pasid ?? "-"}/${r.prgi}`;
        let g = this.partialGroups.get(key);
        if (!g) this.partialGroups.set(key, (g = []));
        g.push({ virtId: r.rid, ...(r.pasid !== undefined ? { pasid: r.pasid } : {}), addr: r.addr, read: r.read, write: r.write, exec: r.exec, priv: r.priv, prgi: r.prgi, last: r.lpig });
        if (r.lpig) {
          this.partialGroups.delete(key);
          groups.push(g);
        }
      }
      await this.w64(VTD_REG.PQH, BigInt(tail));
    }
    const prs = [BigInt(await this.r32(VTD_REG.PRS))];
    if (getNum(prs, PRS_FIELDS.PRO)) this.cb.log({ source: "lost-events", kind: "PRQ overflow", text: "intel-iommu: page request queue overflow; requests were lost" });
    await this.w32(VTD_REG.PRS, Number(prs[0]));
    for (const g of groups) this.cb.pageRequests(g);
  }

  private async drainFaults(): Promise<void> {
    const fsts = [BigInt(await this.r32(VTD_REG.FSTS))];
    if (getNum(fsts, FSTS_FIELDS.PPF)) {
      const fri = getNum(fsts, FSTS_FIELDS.FRI);
      for (let n = 0; n < this.caps.nfr; n++) {
        const i = (fri + n) % this.caps.nfr;
        const off = this.caps.fro + i * 16;
        const w = [await this.r64(off), await this.r64(off + 8)];
        const r = decodeFaultRecord(w);
        if (!r.f) continue;
        const name = vtdFaultReasonName(r.reason);
        this.cb.log({
          source: "veventq",
          kind: name,
          virtId: r.sid,
          ...(r.pasid !== undefined ? { pasid: r.pasid } : {}),
          addr: r.addr,
          raw: w,
          text: `intel-iommu: DMAR fault ${hex(r.reason)} (${name}) rid ${hex(r.sid)}${r.pasid !== undefined ? ` pasid ${r.pasid}` : ""} addr ${hex(r.addr)} ${r.type & 1 ? "read" : "write"}`,
        });
        await this.w64(off + 8, 1n << 63n);
      }
    }
    if (getNum(fsts, FSTS_FIELDS.PFO)) this.cb.log({ source: "lost-events", kind: "fault overflow", text: "intel-iommu: primary fault overflow; faults were lost" });
    await this.w32(VTD_REG.FSTS, Number(fsts[0] & 0x7dn));
  }
}
