import { describe, expect, it } from "vitest";
import { runWalk } from "../tools/walk.js";
import { PERM_RW, type StageConfig } from "../translation.js";
import { PGTT } from "./entries.js";
import { VTD_FR } from "./fault-reasons.js";
import { encodeSmPasidEntry } from "./tables.js";
import { RIG, VtdRig } from "./testing.js";
import { vtdWalk } from "./walk-tool.js";

const RID = 0x0310;

function nested() {
  const rig = new VtdRig();
  const ss = rig.guestSecondStage(2);
  const g = rig.guest();
  const fsRoot = g.alloc.alloc(0x1000) as bigint;
  const fs: StageConfig = { ...rig.firstStage(4), root: fsRoot };
  rig.map(fs, 0x7000_0000n, 0x0020_0000n, 0x1000n, { perms: PERM_RW, dirtyTracking: true }, g.mem, g.alloc, 12);
  const fields = { PGTT: PGTT.NESTED, AW: 2, SSPTPTR: ss.root, FSPTPTR: fsRoot, DID: 20 };
  rig.tables.setPasidEntry(RID, 9, fields);
  return { rig, fields };
}

describe("walk tool, VT-d handler", () => {
  it("tables in a memory image: PA, every structure and descriptor read, image untouched", () => {
    const { rig } = nested();
    const before = rig.mem.stats.writes;
    const r = vtdWalk({ config: { kind: "tables", mem: rig.mem, rtaddr: rig.tables.rta | (1n << 10n) }, rid: RID, pasid: 9, addr: 0x7000_0042n, access: "write" });
    expect(r).toMatchObject({ ok: true, output: RIG.GUEST_BASE + 0x0020_0042n, did: 20, pgtt: PGTT.NESTED, pageShift: 12 });
    expect(r.explain.slice(0, 4).map((l) => l.split(" ")[0])).toEqual(["root-entry", "context-entry", "pasid-dir-entry", "pasid-entry"]);
    const s1 = r.explain.filter((l) => l.startsWith("S1 ") && !l.includes("A/D"));
    const s2 = r.explain.filter((l) => l.startsWith("S2 ") && !l.includes("A/D"));
    expect(s1.length).toBe(4);
    expect(s2.filter((l) => l.includes("fetch)")).length).toBeGreaterThanOrEqual(16);
    expect(s2.filter((l) => l.includes("(final GPA)")).length).toBe(4);
    expect(r.explain.some((l) => l.includes("A/D update"))).toBe(true);
    expect(r.explain.at(-1)).toBe(`→ 0x${(RIG.GUEST_BASE + 0x0020_0042n).toString(16)} (rwx/rwx, 2^12)`);
    expect(rig.mem.stats.writes).toBe(before);
  });

  it("a bare PASID entry", () => {
    const { rig, fields } = nested();
    const entry = encodeSmPasidEntry({ P: 1, ...fields });
    const r = vtdWalk({ config: { kind: "pasid-entry", mem: rig.mem, entry }, rid: RID, pasid: 9, addr: 0x7000_0000n, access: "read" });
    expect(r).toMatchObject({ ok: true, output: RIG.GUEST_BASE + 0x0020_0000n });
    expect(r.explain[0]).toMatch(/^pasid-entry = \[/);
    const bad = vtdWalk({ config: { kind: "pasid-entry", mem: rig.mem, entry: encodeSmPasidEntry({ P: 1, PGTT: 7 }) }, rid: RID, pasid: 9, addr: 0n, access: "read" });
    expect(bad).toMatchObject({ ok: false, reason: VTD_FR.SM_PTE_INV, reasonName: "SM_PTE_INV" });
  });

  it("faults come back as the reason with the record fields", () => {
    const { rig } = nested();
    const r = vtdWalk({ config: { kind: "tables", mem: rig.mem, rtaddr: rig.tables.rta | (1n << 10n) }, rid: RID, pasid: 9, addr: 0x7100_0000n, access: "read", priv: true });
    expect(r).toMatchObject({ ok: false, reason: VTD_FR.SM_PTE_SRE, record: { reason: 0x5d, sid: RID, pasid: 9, priv: true, addr: 0x7100_0000n } });
    const np = vtdWalk({ config: { kind: "tables", mem: rig.mem, rtaddr: rig.tables.rta | (1n << 10n) }, rid: RID, pasid: 9, addr: 0x7100_0000n, access: "read" });
    expect(np).toMatchObject({ ok: false, reason: VTD_FR.SM_FS_P, record: { type: 1, at: 0 } });
    expect(np.explain.at(-1)).toBe("→ fault 0x71 SM_FS_P");
  });

  it("runWalk dispatches vendor \"vtd\": JSON results with steps, config fetches and the fault record", () => {
    const { rig, fields } = nested();
    const out = runWalk({
      image: rig.mem,
      config: { vendor: "vtd", kind: "tables", rtaddr: `0x${(rig.tables.rta | (1n << 10n)).toString(16)}` },
      queries: [
        { streamId: RID, substreamId: 9, iova: "0x70000010", access: "read" },
        { streamId: RID, substreamId: 9, iova: "0x71000000", access: "write" },
      ],
      explain: true,
    });
    expect(out.vendor).toBe("vtd");
    const [a, b] = out.results;
    expect(a).toMatchObject({ ok: true, pa: `0x${(RIG.GUEST_BASE + 0x0020_0010n).toString(16)}`, ipa: "0x200010", size: "0x1000", pageShift: 12 });
    if (a?.ok) {
      expect(a.config?.map((c) => c.what)).toEqual(["root-entry", "context-entry", "pasid-dir-entry", "pasid-entry"]);
      expect(a.steps?.filter((st) => st.stage === 1 && st.updated === undefined).length).toBe(4);
      expect(a.steps?.filter((st) => st.purpose === "output" && st.updated === undefined).length).toBe(4);
    }
    expect(b).toMatchObject({ ok: false, fault: { reason: "0x71", reasonName: "SM_FS_P" }, event: { reason: 0x71, sid: RID, pasid: 9, addr: "0x71000000", type: 0 }, recorded: true });
    const bare = runWalk({
      image: rig.mem,
      config: { vendor: "vtd", kind: "pasid-entry", entry: encodeSmPasidEntry({ P: 1, ...fields }).map((w) => `0x${w.toString(16)}`) },
      queries: [{ streamId: RID, substreamId: 9, iova: 0x7000_0000 }],
    });
    expect(bare.results[0]).toMatchObject({ ok: true, pa: `0x${(RIG.GUEST_BASE + 0x0020_0000n).toString(16)}` });
  });
});
