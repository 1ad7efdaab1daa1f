// Isolation: an adversarial DMA sweep by devices of two sessions finds 0
// bytes read or written outside what is mapped for each device, and one
// session cannot see or use another's objects.
import { DmaOpKind, DmaStatus } from "@iommufd/proto/bus";
import { IoasMapFlags, MmapFlags, MmapProt } from "@iommufd/proto/iommufd";
import { TestTopology, errno, openSession } from "@iommufd/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const PAGE = 4096n;
let topo: TestTopology;

beforeAll(async () => {
  topo = await TestTopology.start([{ kind: "host-iommufd" }]);
}, 60_000);

afterAll(async () => {
  await topo?.stop();
});

describe("isolation", () => {
  for (const iommu of ["smmu0", "dmar0"]) {
    it(`${iommu}: DMA reaches exactly the mapped pages, with their permissions`, { timeout: 60_000 }, async () => {
      const addr = topo.get("host-iommufd").address;
      const victim = await openSession(addr, { clientName: "victim" });
      const attacker = await openSession(addr, { clientName: "attacker" });
      const mem = async (s: typeof victim, pages: bigint) => {
        const { addr: va } = await s.io.mmap({ length: pages * PAGE, prot: MmapProt.READ | MmapProt.WRITE, flags: MmapFlags.PRIVATE | MmapFlags.ANONYMOUS });
        return va;
      };
      const base = iommu === "smmu0" ? 0x1000 : 0x1100;
      const vVa = await mem(victim, 16n);
      const aVa = await mem(attacker, 16n);
      const setup = async (s: typeof victim, va: bigint, rid: number) => {
        await s.admin.createTestDevice({ iommuId: iommu, name: `iso${rid.toString(16)}`, rid });
        const { outDevid } = await s.io.deviceBind({ device: { case: "rid", value: rid } });
        const { outIoasId } = await s.io.ioasAlloc({});
        await s.io.deviceAttach({ devId: outDevid, ptId: outIoasId });
        // 4 writable pages at 0x100000, 2 read-only pages at 0x200000
        await s.io.ioasMap({ ioasId: outIoasId, flags: IoasMapFlags.READABLE | IoasMapFlags.WRITEABLE | IoasMapFlags.FIXED_IOVA, userVa: va, length: 4n * PAGE, iova: 0x100000n });
        await s.io.ioasMap({ ioasId: outIoasId, flags: IoasMapFlags.READABLE | IoasMapFlags.FIXED_IOVA, userVa: va + 4n * PAGE, length: 2n * PAGE, iova: 0x200000n });
        return outIoasId;
      };
      await setup(victim, vVa, base);
      await setup(attacker, aVa, base + 8);
      // The victim's device fills its mapped pages with a pattern.
      const pattern = new Uint8Array(Number(4n * PAGE)).fill(0xaa);
      await victim.admin.testDeviceDma({ rid: base, ops: [{ kind: DmaOpKind.WRITE, addr: 0x100000n, data: pattern }] });

      // The attacker's device sweeps IOVAs: mapped ones work, everything else fails with no data.
      const mapped = (iova: bigint, write: boolean) =>
        (iova >= 0x100000n && iova < 0x100000n + 4n * PAGE) || (!write && iova >= 0x200000n && iova < 0x200000n + 2n * PAGE);
      const probes: bigint[] = [];
      for (let p = 0n; p < 0x300000n; p += PAGE / 2n) probes.push(p);
      for (const p of [0xfee00000n, 0x8000000n, 1n << 40n, (1n << 48n) - PAGE, (1n << 64n) - PAGE]) probes.push(p);
      let leakedBytes = 0;
      let okOps = 0;
      for (const write of [false, true]) {
        const ops = probes.map((iova) => ({ kind: write ? DmaOpKind.WRITE : DmaOpKind.READ, addr: iova, length: 64, data: write ? new Uint8Array(64).fill(0x66) : new Uint8Array(0) }));
        const r = await attacker.admin.testDeviceDma({ rid: base + 8, ops });
        r.results.forEach((res, i) => {
          const iova = probes[i] as bigint;
          if (mapped(iova, write)) {
            expect(res.status, `0x${iova.toString(16)} ${write ? "write" : "read"}`).toBe(DmaStatus.OK);
            okOps++;
          } else {
            expect(res.status, `0x${iova.toString(16)} ${write ? "write" : "read"}`).not.toBe(DmaStatus.OK);
            leakedBytes += res.done + res.data.length;
          }
        });
      }
      expect(leakedBytes).toBe(0);
      expect(okOps).toBeGreaterThan(0);
      // The victim's memory is untouched by the attacker's writes.
      const back = await victim.admin.testDeviceDma({ rid: base, ops: [{ kind: DmaOpKind.READ, addr: 0x100000n, length: Number(4n * PAGE) }] });
      expect(back.results[0]?.data).toEqual(pattern);
      // And the attacker cannot take the victim's device.
      expect(await errno(attacker.io.deviceBind({ device: { case: "rid", value: base } }))).toBe("EINVAL");
      await victim.close();
      await attacker.close();
    });
  }
});
