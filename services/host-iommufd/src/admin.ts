// iommufd.v1.Admin: the operator and test interface of the host (no session
// token; sessions are named by their public id).

import type { ServiceImpl } from "@iommufd/kit";
import { check } from "@iommufd/kit";
import { type Admin, EventDelivery, ObjectType } from "@iommufd/proto/iommufd";
import type { Host } from "./core/host.js";
import type { Session } from "./core/session.js";

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

export function adminService(host: Host): Partial<ServiceImpl<typeof Admin>> {
  return {
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
