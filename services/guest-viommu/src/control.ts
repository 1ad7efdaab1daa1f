// guest.v1.Guest: the control API of the VM (proto/guest/v1/guest.proto).
// Devices are named by their host RID; the guest kernel works with the
// guest-visible ID (vSID / vRID), mapped here. Every failure is an errno
// (ErrnoError), passed through from the guest kernel, the VMM or the host.
import { type ServiceClient, type ServiceImpl, ErrnoError, createClient } from "@iommufd/kit";
import { Device } from "@iommufd/proto/device";
import { DomainType, type Guest, GuestEventSource, GuestIommuVendor, SessionState } from "@iommufd/proto/guest";
import type { IssuedInvalidation } from "./guest/iommu.js";
import type { GuestLogSource } from "./guest/log.js";
import { IOMMU_PROT } from "./guest/pgtable.js";
import { hex } from "./util.js";
import type { Vm } from "./vm.js";
import type { VmmDevice } from "./vmm/frontend.js";
import { VSmmu } from "./vmm/vsmmu.js";
import { VVtd } from "./vmm/vvtd.js";

const SOURCES: Record<GuestLogSource, GuestEventSource> = {
  veventq: GuestEventSource.VEVENTQ,
  "page-request": GuestEventSource.PAGE_REQUEST,
  "lost-events": GuestEventSource.LOST_EVENTS,
  driver: GuestEventSource.DRIVER,
  session: GuestEventSource.SESSION,
};

const STATES = { connecting: SessionState.CONNECTING, open: SessionState.OPEN, lost: SessionState.LOST, closed: SessionState.CLOSED } as const;

function invalidations(list: IssuedInvalidation[]) {
  return list.map((i) => ({ kind: i.kind, words: i.words, text: i.text }));
}

export interface ControlOptions {
  /** device.v1 client for a device-sim address (cached per address). */
  deviceClient?(address: string): Pick<ServiceClient<typeof Device>, "startWorkload">;
}

export function guestService(vm: Vm, opts: ControlOptions = {}): Partial<ServiceImpl<typeof Guest>> {
  const devClients = new Map<string, Pick<ServiceClient<typeof Device>, "startWorkload">>();
  const deviceClient =
    opts.deviceClient ??
    ((address: string) => {
      let c = devClients.get(address);
      if (!c) devClients.set(address, (c = createClient(Device, address).rpc));
      return c;
    });

  const byRid = (rid: number): VmmDevice => {
    const d = vm.require().vmm.devices.find((x) => x.rid === rid);
    if (!d) throw new ErrnoError("ENOENT", `no device with RID ${hex(rid)} in this VM`);
    return d;
  };

  return {
    info() {
      const v = vm.vmm;
      const s = v?.slices[0];
      return {
        vmName: vm.opts.vmName,
        vendor: vm.opts.vendor === "smmuv3" ? GuestIommuVendor.SMMUV3 : GuestIommuVendor.VTD,
        sessionState: STATES[vm.state],
        sessionId: v?.sessionId ?? "",
        ramBytes: v?.regions.reduce((a, r) => a + r.size, 0n) ?? vm.opts.memory,
        ioasId: v?.ioasId ?? 0,
        s2HwptId: s?.parentHwptId ?? 0,
        viommuId: s?.viommuId ?? 0,
        rebuilds: BigInt(vm.rebuilds),
      };
    },

    listDevices() {
      const { vmm, kernel } = vm.require();
      return {
        devices: vmm.devices.map((d) => {
          const kd = kernel.devices.get(d.vid);
          const fe = vmm.frontend;
          const hwptId = fe instanceof VSmmu ? fe.attachedHwpt(d.vid) : fe instanceof VVtd ? fe.attachedHwpt(d.vid) : 0;
          return {
            rid: d.rid,
            virtId: BigInt(d.vid),
            name: d.name,
            devId: d.devId,
            vdeviceId: d.vdeviceId,
            domain: DomainType.DMA,
            hwptId,
            svaPasids: kd ? [...kd.pasids.keys()] : [],
            maxPasidLog2: kd?.dev.pasidBits ?? 0,
            atsEnabled: kd?.dev.atsEnabled ?? false,
            priEnabled: kd?.dev.priEnabled ?? false,
          };
        }),
      };
    },

    async map(req) {
      const { kernel } = vm.require();
      const d = byRid(req.rid);
      const r = await kernel.dmaMap({
        virtId: d.vid,
        ...(req.pasid !== undefined ? { pasid: req.pasid } : {}),
        length: req.length,
        prot: req.prot,
        ...(req.iova !== undefined ? { iova: req.iova } : {}),
        ...(req.gpa !== undefined ? { gpa: req.gpa } : {}),
      });
      return { iova: r.iova, gpa: r.gpa, length: r.length };
    },

    async unmap(req) {
      const { vmm, kernel } = vm.require();
      const d = byRid(req.rid);
      const before = vmm.counters.hwptInvalidateCalls;
      const r = await kernel.dmaUnmap({ virtId: d.vid, ...(req.pasid !== undefined ? { pasid: req.pasid } : {}), iova: req.iova, length: req.length });
      return { length: r.length, invalidations: invalidations(r.invalidations), hwptInvalidateCalls: vmm.counters.hwptInvalidateCalls - before };
    },

    async bindProcess(req) {
      const { kernel } = vm.require();
      const d = byRid(req.rid);
      if (req.pid !== undefined) kernel.process(req.pid);
      const r = await kernel.bind(d.vid, req.pid, req.pasid);
      return { pid: r.pid, pasid: r.pasid };
    },

    async unbindProcess(req) {
      const { kernel } = vm.require();
      const d = byRid(req.rid);
      return { invalidations: invalidations(await kernel.unbind(d.vid, req.pasid)) };
    },

    processMmap(req) {
      const { kernel } = vm.require();
      return { va: kernel.processMmap(req.pid, req.length, req.prot, req.va) };
    },

    async touchProcess(req) {
      const { kernel } = vm.require();
      return { pagesPopulated: await kernel.touch(req.pid, req.va, req.length, req.write) };
    },

    async readMemory(req) {
      const { kernel } = vm.require();
      const t = req.target;
      if (t.case === "gpa") return { data: await kernel.readMemory({ gpa: t.value }, req.length) };
      if (t.case === "process") return { data: await kernel.readMemory({ pid: t.value.pid, va: t.value.va }, req.length) };
      throw new ErrnoError("EINVAL", "no target");
    },

    async writeMemory(req) {
      const { kernel } = vm.require();
      const t = req.target;
      if (t.case === "gpa") await kernel.writeMemory({ gpa: t.value }, req.data);
      else if (t.case === "process") await kernel.writeMemory({ pid: t.value.pid, va: t.value.va }, req.data);
      else throw new ErrnoError("EINVAL", "no target");
      return {};
    },

    async startWorkload(req) {
      const { kernel } = vm.require();
      const spec = req.spec;
      if (!spec) throw new ErrnoError("EINVAL", "no workload spec");
      const d = byRid(spec.rid);
      if (!d.devsim) throw new ErrnoError("ENOENT", `no device-sim address for ${d.name} (--device ...,devsim=<address>)`);
      let iova = spec.iova;
      let gpa = 0n;
      if (iova === 0n && spec.length > 0n) {
        const m = await kernel.dmaMap({
          virtId: d.vid,
          ...(spec.pasid !== undefined ? { pasid: spec.pasid } : {}),
          length: spec.length,
          prot: req.mapProt || IOMMU_PROT.READ | IOMMU_PROT.WRITE,
        });
        iova = m.iova;
        gpa = m.gpa;
      }
      const r = await deviceClient(d.devsim).startWorkload({ spec: { ...spec, rid: d.rid, iova } });
      return { workloadId: r.workloadId, deviceSimAddress: d.devsim, iova, gpa };
    },

    async readEventLog(req) {
      const r = await vm.log.read(req.fromSeq, req.maxEvents, req.waitMs);
      const devices = vm.vmm?.devices ?? [];
      return {
        events: r.events.map((e) => ({
          seq: e.seq,
          unixNanos: e.unixNanos,
          source: SOURCES[e.source],
          kind: e.kind,
          rid: e.virtId !== undefined ? (devices.find((d) => d.vid === e.virtId)?.rid ?? 0) : 0,
          virtId: BigInt(e.virtId ?? 0),
          ...(e.pasid !== undefined ? { pasid: e.pasid } : {}),
          addr: e.addr ?? 0n,
          raw: e.raw ?? [],
          text: e.text,
        })),
        nextSeq: r.nextSeq,
        lost: r.lost,
      };
    },

    stats() {
      const c = vm.vmm?.counters;
      const k = vm.kernel?.counters;
      const ram = vm.vmm?.ram as { counters?: { batches: number; bytes: number } } | undefined;
      const n = (x: number | undefined) => BigInt(x ?? 0);
      return {
        maps: n(k?.maps),
        unmaps: n(k?.unmaps),
        invalidationCommands: n(k?.invalidationCommands),
        hwptInvalidateCalls: n(c?.hwptInvalidateCalls),
        hwptAllocs: n(c?.hwptAllocs),
        vevents: n(c?.vevents),
        lostEvents: n(c?.lostEvents),
        pageRequests: n(c?.pageRequests),
        pageResponses: n(c?.pageResponses),
        memBatches: n(ram?.counters?.batches),
        memBytes: n(ram?.counters?.bytes),
        hostCalls: n(c?.hostCalls),
        other: {
          hwpt_invalidate_entries: n(c?.hwptInvalidateEntries),
          attaches: n(c?.attaches),
          mmio_traps: n(c?.mmioTraps),
          guest_events_injected: n(c?.guestEventsInjected),
          devtlb_absorbed: n(c?.devtlbAbsorbed),
          pages_faulted_in: n(k?.pagesFaultedIn),
          rebuilds: BigInt(vm.rebuilds),
        },
      };
    },
  };
}
