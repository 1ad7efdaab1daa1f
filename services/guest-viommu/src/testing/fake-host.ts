// An in-process stand-in for host-iommufd, for testing the guest/VMM pair
// with no host: a recording iommufd client (every RPC and its request, IDs
// handed out like the kernel's: lowest free from 1), a device inventory, and
// the event port (tests push vEVENTQ / IOPF records and read the page
// responses). It checks nothing the host would check beyond what the VMM
// needs to run; conformance of the real host is tested elsewhere.
import { create } from "@bufbuild/protobuf";
import { ErrnoError, type ErrnoName } from "@iommufd/kit";
import { type IopfRecord, IopfRecordSchema, type VeventRecord, VeventRecordSchema } from "@iommufd/proto/bus";
import {
  CloseSessionResponseSchema,
  DestroyResponseSchema,
  DeviceAttachResponseSchema,
  DeviceBindResponseSchema,
  DeviceDetachResponseSchema,
  FaultQueueAllocResponseSchema,
  GetHwInfoResponseSchema,
  HwInfoType,
  HwptAllocResponseSchema,
  HwptInvalidateResponseSchema,
  IoasAllocResponseSchema,
  IoasMapResponseSchema,
  KeepAliveResponseSchema,
  MemfdCreateResponseSchema,
  MmapResponseSchema,
  OpenSessionResponseSchema,
  VdeviceAllocResponseSchema,
  VeventqAllocResponseSchema,
  ViommuAllocResponseSchema,
} from "@iommufd/proto/iommufd";
import { buildIdRegisters, DEFAULT_SMMU_FEATURES, capRegister, DEFAULT_VTD_CAPABILITIES, ecapRegister } from "@iommufd/hw";
import type { HostDeviceInfo, HostEventPort, HostInventory, IommufdClient, IommufdMethod } from "../vmm/client.js";

export interface FakeDevice extends HostDeviceInfo {
  vendor: "smmuv3" | "vtd";
}

export interface RecordedCall {
  method: IommufdMethod;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- requests are the client's init shapes, read by tests
  req: any;
}

export class FakeHost {
  readonly calls: RecordedCall[] = [];
  readonly pageResponses: { sessionId: string; faultId: number; cookie: number; code: number }[] = [];
  /** Called before each RPC runs; throw to make it fail. */
  hook?: (method: IommufdMethod, req: unknown) => void;
  readonly sessionId = "s1";
  /** Lease the fake grants (the VMM keeps alive at a third of it). */
  leaseMs = 60_000;
  private nextId = 1;
  private nextFd = 3;
  private readonly bound = new Map<number, FakeDevice>();
  private readonly veventqSubs = new Map<number, (r: VeventRecord) => void>();
  private readonly faultSubs = new Map<number, (r: IopfRecord) => void>();
  private veventSeq = 0;
  private faultSeq = 0n;
  private nextCookie = 1;
  /** HWPT attached to each (dev_id, pasid). */
  readonly attached = new Map<string, number>();

  constructor(readonly devices: FakeDevice[]) {}

  of(method: IommufdMethod): RecordedCall[] {
    return this.calls.filter((c) => c.method === method);
  }

  private run<T>(method: IommufdMethod, req: unknown, out: () => T): Promise<T> {
    this.calls.push({ method, req });
    try {
      this.hook?.(method, req);
      return Promise.resolve(out());
    } catch (e) {
      return Promise.reject(e);
    }
  }

  private id(): number {
    return this.nextId++;
  }

  readonly client: IommufdClient = {
    openSession: (req) => this.run("openSession", req, () => create(OpenSessionResponseSchema, { session: "token-1", sessionId: this.sessionId, leaseMs: this.leaseMs })),
    keepAlive: (req) => this.run("keepAlive", req, () => create(KeepAliveResponseSchema, { leaseMs: this.leaseMs })),
    closeSession: (req) => this.run("closeSession", req, () => create(CloseSessionResponseSchema, {})),
    memfdCreate: (req) => this.run("memfdCreate", req, () => create(MemfdCreateResponseSchema, { fd: this.nextFd++ })),
    mmap: (req) => this.run("mmap", req, () => create(MmapResponseSchema, { addr: 0x7f00_0000_0000n })),
    ioasAlloc: (req) => this.run("ioasAlloc", req, () => create(IoasAllocResponseSchema, { outIoasId: this.id() })),
    ioasMap: (req) => this.run("ioasMap", req, () => create(IoasMapResponseSchema, { iova: req.iova ?? 0n })),
    deviceBind: (req) =>
      this.run("deviceBind", req, () => {
        const d = this.devices.find((x) => (req.device?.case === "name" ? x.name === req.device.value : x.rid === req.device?.value));
        if (!d) throw new ErrnoError("ENOENT", "no such device");
        const id = this.id();
        this.bound.set(id, d);
        return create(DeviceBindResponseSchema, { outDevid: id });
      }),
    deviceAttach: (req) =>
      this.run("deviceAttach", req, () => {
        this.attached.set(`${req.devId}/${req.flags ? req.pasid : "rid"}`, req.ptId ?? 0);
        return create(DeviceAttachResponseSchema, { ptId: req.ptId ?? 0 });
      }),
    deviceDetach: (req) =>
      this.run("deviceDetach", req, () => {
        this.attached.delete(`${req.devId}/${req.flags ? req.pasid : "rid"}`);
        return create(DeviceDetachResponseSchema, {});
      }),
    destroy: (req) => this.run("destroy", req, () => create(DestroyResponseSchema, {})),
    hwptAlloc: (req) => this.run("hwptAlloc", req, () => create(HwptAllocResponseSchema, { outHwptId: this.id() })),
    getHwInfo: (req) =>
      this.run("getHwInfo", req, () => {
        const d = this.bound.get(req.devId ?? 0);
        if (!d) throw new ErrnoError("ENOENT", "no device");
        if (d.vendor === "smmuv3") {
          const idr = buildIdRegisters({ ...DEFAULT_SMMU_FEATURES });
          return create(GetHwInfoResponseSchema, {
            dataLen: 40,
            outDataType: HwInfoType.ARM_SMMUV3,
            outMaxPasidLog2: d.maxPasidLog2,
            outCapabilities: d.ats ? 0n : 8n,
            info: { case: "armSmmuv3", value: { idr: [idr.IDR0, idr.IDR1, idr.IDR2, idr.IDR3, idr.IDR4, idr.IDR5], iidr: 0, aidr: 2 } },
          });
        }
        return create(GetHwInfoResponseSchema, {
          dataLen: 24,
          outDataType: HwInfoType.INTEL_VTD,
          outMaxPasidLog2: d.maxPasidLog2,
          outCapabilities: d.ats ? 0n : 8n,
          info: { case: "vtd", value: { capReg: capRegister(DEFAULT_VTD_CAPABILITIES), ecapReg: ecapRegister(DEFAULT_VTD_CAPABILITIES) } },
        });
      }),
    hwptInvalidate: (req) => this.run("hwptInvalidate", req, () => create(HwptInvalidateResponseSchema, { entryNum: req.entryNum ?? 0 })),
    faultQueueAlloc: (req) => this.run("faultQueueAlloc", req, () => create(FaultQueueAllocResponseSchema, { outFaultId: this.id(), outFaultFd: this.nextFd++ })),
    viommuAlloc: (req) => this.run("viommuAlloc", req, () => create(ViommuAllocResponseSchema, { outViommuId: this.id() })),
    vdeviceAlloc: (req) => this.run("vdeviceAlloc", req, () => create(VdeviceAllocResponseSchema, { outVdeviceId: this.id() })),
    veventqAlloc: (req) => this.run("veventqAlloc", req, () => create(VeventqAllocResponseSchema, { outVeventqId: this.id(), outVeventqFd: this.nextFd++ })),
  };

  readonly inventory: HostInventory = {
    lookup: async (sel) => this.devices.find((d) => (sel.name !== undefined ? d.name === sel.name : d.rid === sel.rid)),
  };

  readonly events: HostEventPort = {
    subscribeVeventq: (_s, id, h) => {
      this.veventqSubs.set(id, h);
      return () => this.veventqSubs.delete(id);
    },
    subscribeFault: (_s, id, h) => {
      this.faultSubs.set(id, h);
      return () => this.faultSubs.delete(id);
    },
    pageResponse: (sessionId, faultId, cookie, code) => {
      this.pageResponses.push({ sessionId, faultId, cookie, code });
    },
  };

  /** Make the next call of `method` fail with `errno` (and the response message the host writes back). */
  failNext(method: IommufdMethod, errno: ErrnoName, response?: unknown): void {
    const prev = this.hook;
    let armed = true;
    this.hook = (m, req) => {
      if (armed && m === method) {
        armed = false;
        this.hook = prev;
        throw new ErrnoError(errno, `injected ${errno}`, response !== undefined ? { response } : undefined);
      }
      prev?.(m, req);
    };
  }

  /** Publish a vEVENTQ record (sequence numbered like the kernel unless given). */
  pushVevent(veventqId: number, payload: bigint[], opts: { sequence?: number; flags?: number } = {}): void {
    const h = this.veventqSubs.get(veventqId);
    if (!h) throw new Error(`no subscriber for veventq ${veventqId}`);
    const sequence = opts.sequence ?? this.veventSeq;
    this.veventSeq = (sequence + 1) & 0x7fff_ffff;
    h(create(VeventRecordSchema, { sessionId: this.sessionId, veventqId, type: 1, sequence, flags: opts.flags ?? 0, payload }));
  }

  /** Publish an IOPF group (one record per page; LAST_PAGE on the last). Returns its cookie. */
  pushIopfGroup(faultId: number, devId: number, pages: { addr: bigint; perm: number }[], opts: { pasid?: number; grpid?: number } = {}): number {
    const h = this.faultSubs.get(faultId);
    if (!h) throw new Error(`no subscriber for fault ${faultId}`);
    const cookie = this.nextCookie++;
    pages.forEach((p, i) => {
      this.faultSeq++;
      h(
        create(IopfRecordSchema, {
          sessionId: this.sessionId,
          faultId,
          seq: this.faultSeq,
          flags: (opts.pasid !== undefined ? 1 : 0) | (i === pages.length - 1 ? 2 : 0),
          devId,
          pasid: opts.pasid ?? 0,
          grpid: opts.grpid ?? 1,
          perm: p.perm,
          addr: p.addr,
          cookie,
        }),
      );
    });
    return cookie;
  }
}
