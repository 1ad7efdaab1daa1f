// iommufd.v1.Admin: the operator and test interface of the host (no session
// token; sessions are named by their public id).

import { type ServiceImpl, check } from "@iommufd/kit";
import { type Admin, DeviceOrigin, EventDelivery, ExplainAccess, IommuVendor, ObjectType } from "@iommufd/proto/iommufd";
import type { Registry } from "prom-client";
import type { Host } from "./core/host.js";
import type { PciSlot } from "./core/pci.js";
import type { Session } from "./core/session.js";
import type { Dataplane } from "./dataplane.js";
import type { TestDevices } from "./testdev.js";
import type { Device } from "./uapi/device.js";

function dumpSession(s: Session) {
  return {
    sessionId: s.id,
    clientName: s.clientName,
    leaseRemainingMs: Math.max(0, s.expiresAt - Date.now()),
    eventDelivery: s.eventDelivery === "read" ? EventDelivery.READ : EventDelivery.NATS,
    pinnedBytes: BigInt(s.mm.locked) * 4096n,
    objects: s.objects.objects().map((o) => ({
      id: o.id,
      type: ObjectType[o.type],
      users: o.users,
      attributes: Object.entries(o.describe()).map(([key, v]) => ({ key, value: typeof v === "bigint" ? `0x${v.toString(16)}` : String(v) })),
    })),
    fds: [...s.fds.entries()].map(([fd, e]) =>
      e.kind === "memfd" ? { fd, kind: "memfd", name: e.file.name, size: e.file.size } : { fd, kind: e.kind, objectId: e.objectId },
    ),
  };
}

function pciDevice(host: Host, slot: PciSlot) {
  const d = slot.dev;
  const bound = slot.bound ? host.sessions.get(slot.bound.sessionId) : undefined;
  const devObj = bound?.objects.objects().find((o) => o.type === "DEVICE" && (o as Device).dev === d);
  return {
    rid: d.rid,
    name: d.name,
    iommuId: d.iommu.id,
    maxPasidLog2: d.maxPasidLog2,
    pasidExec: d.pasidExec,
    pasidPriv: d.pasidPriv,
    ats: d.ats,
    atsEnabled: d.ats,
    stu: 0,
    pri: d.pri,
    priEnabled: d.pri,
    origin: d.origin === "test" ? DeviceOrigin.TEST : DeviceOrigin.BUS,
    registeredBy: slot.process ?? "",
    boundSessionId: slot.bound?.sessionId ?? "",
    devId: devObj?.id ?? 0,
  };
}

export interface AdminDeps {
  host: Host;
  dataplane: Dataplane;
  testDevices: TestDevices;
  metrics: Registry;
}

export function adminService({ host, dataplane, testDevices, metrics }: AdminDeps): Partial<ServiceImpl<typeof Admin>> {
  return {
    inventory() {
      return {
        iommus: [...host.pci.iommus.values()].map((d) => {
          // The GET_HW_INFO blob is per device; report it through the first device behind the instance.
          const first = host.pci.all().find((s) => s.dev.iommu === d)?.dev;
          const info = first ? d.hwInfo(first) : undefined;
          return {
            id: d.id,
            vendor: d.vendor === "smmuv3" ? IommuVendor.SMMUV3 : IommuVendor.VTD,
            hwInfoType: info?.type ?? 0,
            hwInfo: info?.data ?? new Uint8Array(0),
            nesting: d.caps.nesting,
            dirtyTracking: d.caps.dirtyTracking,
            maxPasidLog2: d.caps.maxPasidLog2,
          };
        }),
        devices: host.pci.all().map((s) => pciDevice(host, s)),
      };
    },

    createTestDevice(req) {
      const dev = testDevices.create(req);
      return { device: pciDevice(host, host.pci.byRid(dev.rid)) };
    },

    destroyTestDevice(req) {
      testDevices.destroy(req.rid);
      return {};
    },

    testDeviceDma(req) {
      const { dev } = testDevices.get(req.rid);
      return { results: dataplane.dma(dev, { seq: 0n, ops: req.ops }).results };
    },

    testDeviceAts(req) {
      const { dev } = testDevices.get(req.rid);
      check(dev.ats, "EOPNOTSUPP", "the device has no ATS capability");
      return { completions: dataplane.ats(dev, { seq: 0n, requests: req.requests }).completions };
    },

    testDevicePri(req) {
      const { dev } = testDevices.get(req.rid);
      check(dev.pri, "EOPNOTSUPP", "the device has no PRI capability");
      for (const r of req.requests) dataplane.pageRequest(dev, r);
      return {};
    },

    testDeviceInbox(req) {
      return testDevices.inbox(req.rid, req.waitMs);
    },

    async metrics() {
      return { text: await metrics.metrics() };
    },

    explain(req) {
      const slot = host.pci.findRid(req.rid);
      check(slot, "ENODEV", `no device with rid 0x${req.rid.toString(16)}`);
      const kinds = { [ExplainAccess.READ]: "read", [ExplainAccess.WRITE]: "write", [ExplainAccess.EXEC]: "exec" } as const;
      const kind = kinds[req.access as keyof typeof kinds];
      check(kind, "EINVAL", `access ${req.access} is not an ExplainAccess value`);
      const e = slot.dev.iommu.explain(slot.dev, req.pasid, req.iova, { kind, privileged: req.priv });
      return { text: [...e.steps, e.result].join("\n") };
    },

    dumpObjects(req) {
      const sessions = req.sessionIds.length > 0 ? req.sessionIds.map((id) => host.sessionById(id)) : [...host.sessions.values()];
      return { sessions: sessions.map(dumpSession) };
    },

    setFailNth(req) {
      const s = host.sessionById(req.sessionId);
      check(/^[\w*?:. /-]*$/.test(req.pointFilter), "EINVAL", "point_filter is not a valid glob");
      s.failNth.arm(Number(req.nth), req.pointFilter);
      return {};
    },

    getFailNth(req) {
      const f = host.sessionById(req.sessionId).failNth;
      return {
        nth: BigInt(f.pending),
        injected: f.injectedPoint !== "",
        injectedPoint: f.injectedPoint,
        injectedErrno: f.injectedPoint ? 12 : 0,
        pointsHit: BigInt(f.hits),
      };
    },

    getTunables() {
      return { tunables: tunablesOut(host) };
    },

    setTunables(req) {
      const t = req.tunables;
      if (!t) return { tunables: tunablesOut(host) };
      const positive = [t.atcInvalidationTimeoutMs, t.memlockLimitBytes, t.defaultLeaseMs, t.maxLeaseMs, t.maxFdsPerSession];
      check(positive.every((v) => v === undefined || BigInt(v) > 0n), "EINVAL", "tunables must be positive");
      if (t.atcInvalidationTimeoutMs !== undefined) host.tunables.atcInvalidationTimeoutMs = t.atcInvalidationTimeoutMs;
      if (t.memlockLimitBytes !== undefined) host.tunables.memlockPages = Number(t.memlockLimitBytes / 4096n);
      if (t.defaultLeaseMs !== undefined) host.tunables.leaseMsDefault = t.defaultLeaseMs;
      if (t.maxLeaseMs !== undefined) host.tunables.leaseMsMax = t.maxLeaseMs;
      return { tunables: tunablesOut(host) };
    },
  };
}

function tunablesOut(host: Host) {
  const t = host.tunables;
  return {
    atcInvalidationTimeoutMs: t.atcInvalidationTimeoutMs,
    memlockLimitBytes: BigInt(t.memlockPages) * 4096n,
    defaultLeaseMs: t.leaseMsDefault,
    maxLeaseMs: t.leaseMsMax,
    maxFdsPerSession: 1024,
  };
}
