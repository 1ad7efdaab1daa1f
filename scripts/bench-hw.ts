// Hardware microbenchmark (not a test): ns per IOTLB hit, per cold 1-stage
// walk and per cold nested 4×4 walk (SMMUv3/Arm and VT-d), with memory reads
// per walk. Prints a table and writes bench-results/hw.json.
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { runHwBench } from "@iommufd/hw";

const rows = runHwBench(() => performance.now());
console.log(`hardware microbenchmark — ${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, load ${loadavg()[0]?.toFixed(2)}`);
console.log(`${"benchmark".padEnd(52)} ${"ns/op".padStart(10)} ${"reads/walk".padStart(11)}`);
for (const r of rows) {
  console.log(`${r.name.padEnd(52)} ${r.nsPerOp.toFixed(1).padStart(10)} ${(r.readsPerWalk ?? "").toString().padStart(11)}`);
}
mkdirSync("bench-results", { recursive: true });
writeFileSync("bench-results/hw.json", JSON.stringify({ when: new Date().toISOString(), load: loadavg(), rows }, null, 2));
console.log("wrote bench-results/hw.json");
