import { createClient } from "@iommufd/kit";
import { Device, DmaKind, WorkloadKind } from "@iommufd/proto/device";
import { Guest } from "@iommufd/proto/guest";
import { TestTopology } from "@iommufd/testkit";
const vendor = process.argv[2] ?? "smmuv3";
const iommu = vendor === "smmuv3" ? "smmu0" : "dmar0";
const topo = await TestTopology.start([
  { kind: "host-iommufd", args: ["--iommu", `${iommu}=${vendor}`] },
  { kind: "device-sim", name: "dev1", args: ["--endpoint", `name=ep0,rid=0x18,iommu=${iommu},pasid=8,ats=1,atc=64,pri=1,prq=32`] },
], { logDir: "/tmp/gv/logs", logLevel: process.env.LL ?? "info" });
const devsim = topo.get("dev1").address;
await topo.add({ kind: "guest-viommu", name: "vm1", args: ["--vendor", vendor, "--memory", "32M", "--host", topo.get("host-iommufd").address, "--device", `rid=0x18,vid=16,devsim=${devsim}`] });
const guest = createClient(Guest, topo.get("vm1").address);
const dev = createClient(Device, devsim);
for (let i = 0; i < 100; i++) { const d = await guest.rpc.listDevices({}).catch((e) => String(e)); if (typeof d !== "string" && d.devices.length) break; await new Promise((r) => setTimeout(r, 200)); }
const useAts = process.argv[3] === "ats";
const t0 = Date.now();
console.log("starting workload");
const w = await guest.rpc.startWorkload({ spec: { rid: 0x18, kind: Number(process.env.KIND ?? WorkloadKind.VERIFY), length: BigInt(process.argv[4] ?? "65536"), opSize: 4096, useAts, count: 16n }, mapProt: 3 }, { deadlineMs: 8000 }).catch((e) => String(e));
console.log("workload", Date.now() - t0, typeof w === "string" ? w : w.workloadId);
if (typeof w !== "string") {
  for (let i = 0; i < 20; i++) {
    const st = await dev.rpc.getWorkload({ workloadId: w.workloadId }, { deadlineMs: 3000 }).catch((e) => String(e).slice(0, 100));
    if (typeof st === "string") { console.log("get", Date.now() - t0, st); continue; }
    console.log("get", Date.now() - t0, st.status?.state, st.status?.ops, st.status?.faults, st.status?.verifyMismatches, st.status?.error);
    if (st.status?.state !== 1) break;
    await new Promise((r) => setTimeout(r, 300));
  }
}
await topo.stop();
process.exit(0);
