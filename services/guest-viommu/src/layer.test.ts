// The guest/VMM interface on its own (DESIGN §7): the guest kernel's driver
// programs the VMM's virtual IOMMU, and the VMM's iommufd client is a
// recording fake — no host, no NATS. Guest RAM is an in-process byte map, so
// the packages/hw walker can check what the guest built in it.
import {
  STE_CONFIG,
  armStage1Config,
  decodeCdFields,
  decodeSteFields,
  encodeEvent,
  fetchSte,
  walkStage,
  bytesToWords,
  SMMU_REG,
  CMD_OP,
  commandOpcode,
  decodeCommand,
  vtdFirstStageConfig,
} from "@iommufd/hw";
import { ErrnoError } from "@iommufd/kit";
import { HwptAllocFlags, HwptDataType, HwptInvalidateDataType, HwInfoType, IoasMapFlags, VeventqFlag } from "@iommufd/proto/iommufd";
import { describe, expect, it } from "vitest";
import { GuestKernel } from "./guest/kernel.js";
import { IOMMU_PROT } from "./guest/pgtable.js";
import { ByteMapRam } from "./guest/ram.js";
import { FakeHost, type FakeDevice } from "./testing/fake-host.js";
import { Vmm, type VmmDeviceSpec, type VmmOptions } from "./vmm/vmm.js";
import type { VSmmu } from "./vmm/vsmmu.js";
import type { VVtd } from "./vmm/vvtd.js";

const MiB = 1n << 20n;
const mask = (hi: number, lo: number) => ((1n << BigInt(hi - lo + 1)) - 1n) << BigInt(lo);
// The vSTE fields iommufd takes (hw-formats §1.10), written out independently of the VMM's tables.
const QW0_ALLOWED = mask(0, 0) | mask(3, 1) | mask(5, 4) | mask(51, 6) | mask(63, 59);
const QW1_ALLOWED = mask(1, 0) | mask(3, 2) | mask(5, 4) | mask(7, 6) | mask(27, 27) | mask(29, 28);

async function boot(vendor: "smmuv3" | "vtd", devices: FakeDevice[], specs: VmmDeviceSpec[], extra: Partial<VmmOptions> = {}) {
  const host = new FakeHost(devices);
  let ram: ByteMapRam | undefined;
  const vmm = new Vmm({
    vendor,
    vmName: "vm1",
    memory: 64n * MiB,
    devices: specs,
    client: host.client,
    inventory: host.inventory,
    events: host.events,
    ramFactory: ({ regions }) => (ram = new ByteMapRam(regions)),
    ...extra,
  });
  await vmm.start();
  const kernel = new GuestKernel(vmm.port);
  await kernel.boot();
  return { host, vmm, kernel, ram: ram as ByteMapRam };
}

const smmuDev = (over: Partial<FakeDevice> = {}): FakeDevice => ({ name: "nic0", rid: 0x18, iommuId: "smmu0", vendor: "smmuv3", maxPasidLog2: 8, ats: true, pri: true, ...over });
const vtdDev = (over: Partial<FakeDevice> = {}): FakeDevice => ({ name: "nic0", rid: 0x18, iommuId: "dmar0", vendor: "vtd", maxPasidLog2: 8, ats: true, pri: true, ...over });

/** The guest's STE for `vsid` as it is in guest RAM (walked with the hardware model's stream-table code). */
async function vste(vmm: Vmm, ram: ByteMapRam, vsid: number): Promise<bigint[]> {
  const base = await vmm.port.mmio.read(SMMU_REG.STRTAB_BASE, 8);
  const cfg = Number(await vmm.port.mmio.read(SMMU_REG.STRTAB_BASE_CFG, 4));
  const r = fetchSte(ram.mem, { base, cfg }, vsid, { sidBits: 16, twoLevel: true });
  if (!r.ok) throw new Error(`no STE for ${vsid}: ${r.fault}`);
  return r.words;
}

/** Walk the guest's stage 1 for (vsid, ssid) from guest RAM: STE → CD → tables, as the SMMU would (without stage 2). */
async function smmuWalk(vmm: Vmm, ram: ByteMapRam, vsid: number, ssid: number, iova: bigint) {
  const ste = decodeSteFields(await vste(vmm, ram, vsid));
  const cdw = bytesToWords((ram.mem.read(ste.S1ContextPtr + BigInt(ssid) * 64n, 64) as { ok: true; value: Uint8Array }).value);
  const cd = decodeCdFields(cdw);
  const s1 = armStage1Config({ granuleShift: 12, tsz: cd.T0SZ, outputBits: 48, ttb: cd.TTB0 });
  if (!s1.ok) throw new Error(s1.error);
  return { cd, result: walkStage(ram.mem, s1.stage, iova, { kind: "write", privileged: false }) };
}

describe("guest ↔ VMM, virtual SMMUv3, recording host", () => {
  it("builds the VM's iommufd objects in the VMM's order", async () => {
    const { host, vmm } = await boot("smmuv3", [smmuDev()], [{ name: "nic0", vid: 0x10 }]);
    const order = host.calls.map((c) => c.method);
    expect(order.slice(0, 12)).toEqual([
      "openSession",
      "memfdCreate",
      "mmap",
      "ioasAlloc",
      "ioasMap",
      "faultQueueAlloc",
      "deviceBind",
      "getHwInfo",
      "hwptAlloc",
      "viommuAlloc",
      "veventqAlloc",
      "vdeviceAlloc",
    ]);
    const map = host.of("ioasMap")[0]?.req;
    expect(map.flags).toBe(IoasMapFlags.FIXED_IOVA | IoasMapFlags.READABLE | IoasMapFlags.WRITEABLE);
    expect(map.iova).toBe(0x4000_0000n); // IOVA = GPA: Arm virt RAM base
    expect(map.length).toBe(64n * MiB);
    const parent = host.of("hwptAlloc")[0]?.req;
    expect(parent.flags & HwptAllocFlags.NEST_PARENT).toBeTruthy();
    expect(parent.ptId).toBe(vmm.ioasId);
    expect(host.of("viommuAlloc")[0]?.req).toMatchObject({ type: 1, hwptId: vmm.slices[0]?.parentHwptId });
    expect(host.of("vdeviceAlloc")[0]?.req).toMatchObject({ viommuId: vmm.slices[0]?.viommuId, virtId: 0x10n });
    expect(host.of("getHwInfo")[0]?.req.devId).toBe(vmm.devices[0]?.devId);
    expect((await host.client.getHwInfo({ devId: vmm.devices[0]?.devId ?? 0 })).outDataType).toBe(HwInfoType.ARM_SMMUV3);
  });

  it("turns the guest's CFGI_STE into HwptAlloc(vSTE qw0/qw1) on the vIOMMU + DeviceAttach", async () => {
    const { host, vmm, kernel, ram } = await boot("smmuv3", [smmuDev(), smmuDev({ name: "nvme0", rid: 0x20, pri: false, ats: false, maxPasidLog2: 0 })], [
      { name: "nic0", vid: 0x10 },
      { name: "nvme0", vid: 0x123 },
    ]);
    const viommu = vmm.slices[0]?.viommuId;
    const nested = host.of("hwptAlloc").filter((c) => c.req.ptId === viommu);
    expect(nested.length).toBeGreaterThanOrEqual(2);
    for (const [i, vsid] of [0x10, 0x123].entries()) {
      const words = await vste(vmm, ram, vsid);
      const f = decodeSteFields(words);
      expect(f.V).toBe(true);
      expect(f.Config).toBe(STE_CONFIG.S1_TRANS);
      const call = host.of("hwptAlloc").filter((c) => c.req.ptId === viommu && c.req.devId === vmm.devices[i]?.devId).at(-1)?.req;
      expect(call.dataType).toBe(HwptDataType.ARM_SMMUV3);
      expect(call.dataLen).toBe(16);
      expect(call.data.case).toBe("armSmmuv3");
      expect(call.data.value.ste).toEqual([(words[0] as bigint) & QW0_ALLOWED, (words[1] as bigint) & QW1_ALLOWED]);
      // Only a device with PRI gets its faults routed to the VM's fault queue.
      const pri = i === 0;
      expect(Boolean(call.flags & HwptAllocFlags.FAULT_ID_VALID)).toBe(pri);
      if (pri) expect(call.faultId).toBe(vmm.faultId);
      // EATS requested only with ATS.
      expect(f.EATS).toBe(pri ? 1 : 0);
      // The CD the vSTE points at holds the DMA domain's table and ASID.
      const kd = kernel.device(vsid);
      const cd = decodeCdFields(bytesToWords((ram.mem.read(f.S1ContextPtr, 64) as { ok: true; value: Uint8Array }).value));
      expect(cd.V).toBe(true);
      expect(cd.TTB0).toBe(kd.domain.pgtable.root);
      expect(cd.ASID).toBe(kd.domain.tag);
    }
    // Each device's nested HWPT was attached to it (a replace of whatever was there).
    for (const d of vmm.devices) {
      const last = (vmm.frontend as VSmmu).installs.filter((x) => x.vsid === d.vid).at(-1);
      expect(last).toBeDefined();
      expect(host.attached.get(`${d.devId}/rid`)).toBe(last?.hwptId);
    }
  });

  it("maps DMA with a guest-built stage 1 and unmaps N pages with ONE HwptInvalidate", async () => {
    const { host, vmm, kernel, ram } = await boot("smmuv3", [smmuDev()], [{ name: "nic0", vid: 0x10 }]);
    const N = 16n;
    const m = await kernel.dmaMap({ virtId: 0x10, length: N * 4096n, prot: IOMMU_PROT.READ | IOMMU_PROT.WRITE });
    expect(m.length).toBe(N * 4096n);
    // The tables are in guest RAM: the hardware walk of STE → CD → stage 1 finds the buffer.
    for (let i = 0n; i < N; i++) {
      const { result } = await smmuWalk(vmm, ram, 0x10, 0, m.iova + i * 4096n + 8n);
      expect(result.ok && result.output).toBe(m.gpa + i * 4096n + 8n);
    }
    // When the HwptInvalidate arrives, the unmap is already visible in guest RAM (DESIGN §3 ordering).
    let walkAtInvalidate: boolean | undefined;
    host.hook = (method) => {
      if (method === "hwptInvalidate" && walkAtInvalidate === undefined) {
        void smmuWalk(vmm, ram, 0x10, 0, m.iova).then(({ result }) => (walkAtInvalidate = result.ok));
      }
    };
    const before = host.of("hwptInvalidate").length;
    const u = await kernel.dmaUnmap({ virtId: 0x10, iova: m.iova, length: N * 4096n });
    await Promise.resolve();
    expect(walkAtInvalidate).toBe(false);
    expect(u.length).toBe(N * 4096n);
    const calls = host.of("hwptInvalidate").slice(before);
    expect(calls).toHaveLength(1);
    const req = calls[0]?.req;
    expect(req.hwptId).toBe(vmm.slices[0]?.viommuId);
    expect(req.dataType).toBe(HwptInvalidateDataType.ARM_SMMUV3);
    expect(req.entryLen).toBe(16);
    expect(req.entryNum).toBe(req.entries.length);
    const ops = req.entries.map((e: { entry: { value: { cmd: bigint[] } } }) => commandOpcode(e.entry.value.cmd));
    expect(ops).toContain(CMD_OP.TLBI_NH_VA);
    expect(ops).toContain(CMD_OP.ATC_INV);
    expect(ops).not.toContain(CMD_OP.SYNC); // the host issues its own CMD_SYNC
    const tlbi = decodeCommand(req.entries[0].entry.value.cmd);
    expect(tlbi.ok && tlbi.cmd.name === "TLBI_NH_VA" && tlbi.cmd.ASID).toBe(kernel.device(0x10).domain.tag);
    // What the guest wrote in its CMDQ is what the host got (minus CMD_SYNC).
    expect(u.invalidations.filter((x) => x.kind !== "CMD_SYNC").map((x) => x.words)).toEqual(req.entries.map((e: { entry: { value: { cmd: bigint[] } } }) => e.entry.value.cmd));
    const after = await smmuWalk(vmm, ram, 0x10, 0, m.iova);
    expect(after.result.ok).toBe(false);
  });

  it("without range invalidation, N TLBI_NH_VA commands still make one HwptInvalidate", async () => {
    const { host, kernel, vmm } = await boot("smmuv3", [smmuDev({ ats: false, pri: false })], [{ name: "nic0", vid: 0x10 }], { smmu: { ril: false } });
    const m = await kernel.dmaMap({ virtId: 0x10, length: 32n * 4096n, prot: IOMMU_PROT.READ });
    const before = host.of("hwptInvalidate").length;
    const callsBefore = vmm.counters.hwptInvalidateCalls;
    const u = await kernel.dmaUnmap({ virtId: 0x10, iova: m.iova, length: 32n * 4096n });
    const calls = host.of("hwptInvalidate").slice(before);
    expect(calls).toHaveLength(1);
    expect(calls[0]?.req.entryNum).toBe(32);
    expect(u.invalidations.filter((x) => x.kind === "CMD_TLBI_NH_VA")).toHaveLength(32);
    expect(vmm.counters.hwptInvalidateCalls - callsBefore).toBe(1);
  });

  it("injects vEVENTQ records into the guest event queue with the vSID; LOST_EVENTS and gaps become an overflow", async () => {
    const { host, vmm, kernel } = await boot("smmuv3", [smmuDev()], [{ name: "nic0", vid: 0x10 }]);
    const q = vmm.slices[0]?.veventqId ?? 0;
    const evt = encodeEvent({ type: "F_TRANSLATION", StreamID: 0x10, SSV: false, InputAddr: 0x1234_5000n, RnW: true, S2: false, CLASS: 2 });
    host.pushVevent(q, evt);
    const e = await kernel.log.waitFor((x) => x.kind === "F_TRANSLATION");
    expect(e.virtId).toBe(0x10);
    expect(e.addr).toBe(0x1234_5000n);
    expect(e.source).toBe("veventq");
    expect(e.raw).toEqual(evt);
    host.pushVevent(q, [], { flags: VeventqFlag.LOST_EVENTS });
    await kernel.log.waitFor((x) => x.kind === "EVTQ overflow");
    // Acknowledged overflow, then a gap in the sequence: overflow again.
    const seen = kernel.log.next;
    host.pushVevent(q, evt, { sequence: 10 });
    await kernel.log.waitFor((x) => x.seq >= seen && x.kind === "EVTQ overflow");
    expect(vmm.counters.lostEvents).toBeGreaterThanOrEqual(2);
  });

  it("SVA: binds a process to a PASID (CD + CFGI_CD) and answers PRI by faulting pages in", async () => {
    const { host, vmm, kernel, ram } = await boot("smmuv3", [smmuDev()], [{ name: "nic0", vid: 0x10 }]);
    const before = host.of("hwptInvalidate").length;
    const b = await kernel.bind(0x10);
    expect(b.pasid).toBeGreaterThan(0);
    const cfgi = host.of("hwptInvalidate").slice(before).flatMap((c) => c.req.entries.map((e: { entry: { value: { cmd: bigint[] } } }) => decodeCommand(e.entry.value.cmd)));
    expect(cfgi.some((d) => d.ok && d.cmd.name === "CFGI_CD" && d.cmd.StreamID === 0x10 && d.cmd.SubstreamID === b.pasid)).toBe(true);
    const va = kernel.processMmap(b.pid, 4n * 4096n, 3);
    const dev = vmm.devices[0];
    const cookie = host.pushIopfGroup(vmm.faultId, dev?.devId ?? 0, [{ addr: va + 4096n, perm: 3 }], { pasid: b.pasid, grpid: 7 });
    await expect.poll(() => host.pageResponses.length).toBe(1);
    expect(host.pageResponses[0]).toMatchObject({ cookie, code: 0, faultId: vmm.faultId });
    // The page is now mapped in the process's tables, as the device will find it (CD at the PASID).
    const { cd, result } = await smmuWalk(vmm, ram, 0x10, b.pasid, va + 4096n);
    expect(cd.ASID).toBe(kernel.process(b.pid).domain.tag);
    expect(result.ok).toBe(true);
    expect(kernel.process(b.pid).pages.has(va + 4096n)).toBe(true);
    // Outside any VMA: the group is answered INVALID.
    const bad = host.pushIopfGroup(vmm.faultId, dev?.devId ?? 0, [{ addr: 0x1000n, perm: 1 }], { pasid: b.pasid, grpid: 8 });
    await expect.poll(() => host.pageResponses.length).toBe(2);
    expect(host.pageResponses[1]).toMatchObject({ cookie: bad, code: 1 });
    const log = kernel.log.entries().map((x) => x.kind);
    expect(log).toContain("page request");
    expect(log).toContain("page response SUCCESS");
    expect(log).toContain("page response INVALID");
  });

  it("installs BYPASS / ABORT vSTEs as the shared bypass / abort nested HWPTs", async () => {
    const { host, vmm, kernel } = await boot("smmuv3", [smmuDev({ pri: false, ats: false, maxPasidLog2: 0 })], [{ name: "nic0", vid: 0x10 }]);
    const kd = kernel.device(0x10);
    const devId = vmm.devices[0]?.devId;
    await kernel.driver.attachDevice(kd.dev, "identity");
    const bypass = host.of("hwptAlloc").find((c) => c.req.data?.value?.ste?.[0] === 0x9n);
    expect(bypass?.req.data.value.ste).toEqual([0x9n, 0n]); // V | Config = 0b100
    expect((vmm.frontend as VSmmu).steConfig(0x10)).toBe("bypass");
    await kernel.driver.attachDevice(kd.dev, "blocked");
    expect((vmm.frontend as VSmmu).steConfig(0x10)).toBe("abort");
    const abort = host.of("hwptAlloc").find((c) => c.req.data?.value?.ste?.[0] === 0x1n);
    expect(abort?.req.data.value.ste).toEqual([0x1n, 0n]); // V | Config = 0b000
    expect(host.attached.get(`${devId}/rid`)).toBe((vmm.frontend as VSmmu).attachedHwpt(0x10));
    // Back to the DMA domain: a fresh nested HWPT; the shared ones are not destroyed.
    await kernel.driver.attachDevice(kd.dev, kd.domain);
    expect((vmm.frontend as VSmmu).steConfig(0x10)).toMatch(/^s1:/);
    const destroyed = host.of("destroy").map((c) => c.req.id);
    expect(destroyed).not.toContain(host.attached.get(`${devId}/rid`));
  });

  it("reports a host refusal of an invalidation as a CMDQ error and keeps going", async () => {
    const { host, kernel } = await boot("smmuv3", [smmuDev()], [{ name: "nic0", vid: 0x10 }]);
    const m = await kernel.dmaMap({ virtId: 0x10, length: 4096n, prot: IOMMU_PROT.READ });
    host.failNext("hwptInvalidate", "EIO", { entryNum: 0 });
    const e = await kernel.dmaUnmap({ virtId: 0x10, iova: m.iova, length: 4096n }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ErrnoError);
    expect((e as ErrnoError).errno).toBe("EIO");
    expect(kernel.log.entries().some((x) => x.kind === "CERROR_ILL")).toBe(true);
    // The queue recovered: later work goes through.
    const m2 = await kernel.dmaMap({ virtId: 0x10, length: 4096n, prot: IOMMU_PROT.READ });
    await expect(kernel.dmaUnmap({ virtId: 0x10, iova: m2.iova, length: 4096n })).resolves.toMatchObject({ length: 4096n });
  });
});

describe("guest ↔ VMM, virtual VT-d, recording host", () => {
  it("shadows the RID_PASID first-stage entry as HwptAlloc(VTD_S1) on the nesting parent", async () => {
    const { host, vmm, kernel } = await boot("vtd", [vtdDev()], [{ name: "nic0", vid: 0x0300 }]);
    expect(host.of("viommuAlloc")).toHaveLength(0);
    const parent = host.of("hwptAlloc")[0]?.req;
    expect(parent.flags & HwptAllocFlags.NEST_PARENT).toBeTruthy();
    expect(host.of("ioasMap")[0]?.req.iova).toBe(0n);
    const nested = host.of("hwptAlloc").filter((c) => c.req.ptId === vmm.slices[0]?.parentHwptId);
    expect(nested).toHaveLength(1);
    const req = nested[0]?.req;
    expect(req.dataType).toBe(HwptDataType.VTD_S1);
    expect(req.dataLen).toBe(24);
    expect(req.data.case).toBe("vtdS1");
    expect(req.data.value).toMatchObject({ flags: 0n, pgtblAddr: kernel.device(0x0300).domain.pgtable.root, addrWidth: 48 });
    expect(req.flags & HwptAllocFlags.FAULT_ID_VALID).toBeTruthy();
    const attach = host.of("deviceAttach").at(-1)?.req;
    expect(attach).toMatchObject({ devId: vmm.devices[0]?.devId, flags: 0 });
    expect(host.attached.get(`${vmm.devices[0]?.devId}/rid`)).toBe((vmm.frontend as VVtd).installs[0]?.hwptId);
  });

  it("unmaps N pages with ONE HwptInvalidate (VTD_S1 entries) on the nested HWPT", async () => {
    const { host, vmm, kernel, ram } = await boot("vtd", [vtdDev()], [{ name: "nic0", vid: 0x0300 }]);
    const m = await kernel.dmaMap({ virtId: 0x0300, length: 8n * 4096n, prot: IOMMU_PROT.READ | IOMMU_PROT.WRITE });
    const root = kernel.device(0x0300).domain.pgtable.root;
    const fs = vtdFirstStageConfig({ levels: 4, fsptptr: root, haw: 48 });
    if (!fs.ok) throw new Error(fs.error);
    const w = walkStage(ram.mem, fs.stage, m.iova + 0x10n, { kind: "write", privileged: false });
    expect(w.ok && w.output).toBe(m.gpa + 0x10n);
    const before = host.of("hwptInvalidate").length;
    const u = await kernel.dmaUnmap({ virtId: 0x0300, iova: m.iova, length: 8n * 4096n });
    const calls = host.of("hwptInvalidate").slice(before);
    expect(calls).toHaveLength(1);
    const req = calls[0]?.req;
    expect(req.hwptId).toBe((vmm.frontend as VVtd).installs[0]?.hwptId);
    expect(req.dataType).toBe(HwptInvalidateDataType.VTD_S1);
    expect(req.entryLen).toBe(24);
    expect(req.entries).toHaveLength(1);
    expect(req.entries[0].entry.value).toMatchObject({ addr: m.iova, npages: 8n, flags: 1 });
    expect(u.invalidations.map((x) => x.kind)).toEqual(["PASID-IOTLB", "DEVICE-TLB", "WAIT"]);
    expect(vmm.counters.devtlbAbsorbed).toBeGreaterThan(0);
    expect(walkStage(ram.mem, fs.stage, m.iova, { kind: "read", privileged: false }).ok).toBe(false);
  });

  it("shadows a pass-through PASID entry as an attach of the nesting parent, and a cleared one as a detach", async () => {
    const { host, vmm, kernel } = await boot("vtd", [vtdDev({ pri: false, ats: false })], [{ name: "nic0", vid: 0x0300 }]);
    const kd = kernel.device(0x0300);
    await kernel.driver.attachDevice(kd.dev, "identity");
    expect(host.of("deviceAttach").at(-1)?.req).toMatchObject({ devId: vmm.devices[0]?.devId, ptId: vmm.slices[0]?.parentHwptId, flags: 0 });
    expect((vmm.frontend as VVtd).attachedHwpt(0x0300)).toBe(vmm.slices[0]?.parentHwptId);
    await kernel.driver.attachDevice(kd.dev, "blocked");
    expect(host.of("deviceDetach").at(-1)?.req).toMatchObject({ devId: vmm.devices[0]?.devId, flags: 0 });
    expect((vmm.frontend as VVtd).attachedHwpt(0x0300)).toBe(0);
  });

  it("SVA: a VCMD-allocated PASID is shadowed as a PASID attach; PRQ page requests are answered", async () => {
    const { host, vmm, kernel, ram } = await boot("vtd", [vtdDev()], [{ name: "nic0", vid: 0x0300 }]);
    const b = await kernel.bind(0x0300);
    expect(b.pasid).toBe(1); // the VMM's virtual-command PASID allocator hands out 1 first
    const vv = vmm.frontend as VVtd;
    const inst = vv.installs.find((x) => x.pasid === b.pasid);
    expect(inst?.data.pgtblAddr).toBe(kernel.process(b.pid).domain.pgtable.root);
    const alloc = host.of("hwptAlloc").find((c) => c.req.data?.value?.pgtblAddr === inst?.data.pgtblAddr)?.req;
    expect(alloc.flags & HwptAllocFlags.PASID).toBeTruthy();
    expect(alloc.flags & HwptAllocFlags.FAULT_ID_VALID).toBeTruthy();
    expect(host.of("deviceAttach").at(-1)?.req).toMatchObject({ devId: vmm.devices[0]?.devId, flags: 1, pasid: b.pasid, ptId: inst?.hwptId });
    const va = kernel.processMmap(b.pid, 2n * 4096n, 3);
    const cookie = host.pushIopfGroup(vmm.faultId, vmm.devices[0]?.devId ?? 0, [{ addr: va, perm: 2 }], { pasid: b.pasid, grpid: 3 });
    await expect.poll(() => host.pageResponses.length).toBe(1);
    expect(host.pageResponses[0]).toMatchObject({ cookie, code: 0 });
    const fs = vtdFirstStageConfig({ levels: 4, fsptptr: kernel.process(b.pid).domain.pgtable.root, haw: 48 });
    if (!fs.ok) throw new Error(fs.error);
    expect(walkStage(ram.mem, fs.stage, va, { kind: "write", privileged: false }).ok).toBe(true);
    // Unbind: the PASID entry goes, the VMM detaches the PASID and destroys the nested HWPT.
    await kernel.unbind(0x0300, b.pasid);
    expect(host.of("deviceDetach").at(-1)?.req).toMatchObject({ devId: vmm.devices[0]?.devId, flags: 1, pasid: b.pasid });
    expect(host.of("destroy").map((c) => c.req.id)).toContain(inst?.hwptId);
  });
});
