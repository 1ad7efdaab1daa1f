// Hardware microbenchmark (not a test): ns per IOTLB hit, per cold 1-stage
// walk and per cold nested 4×4 walk (SMMUv3/Arm and VT-d), with memory reads
// per walk. Prints a table and writes bench-results/hw.json. Runs under tsx;
// `npm run bench` runs the same code bundled under plain node.
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { runHwBench } from "@iommufd/hw";

const rows = runHwBench(() => performance.now());
console.log(`hardware microbenchmark — ${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, load ${loadavg()[0]?.toFixed(2)}`);
console.log(`${"benchmark".padEnd(56)} ${"ns/op best".padStart(11)} ${"median".padStart(9)} ${"reads/walk".padStart(11)}`);
for (const r of rows) {
  console.log(`${r.name.padEnd(56)} ${r.nsPerOp.toFixed(1).padStart(11)} ${r.nsMedian.toFixed(1).padStart(9)} ${r.readsPerWalk.toString().padStart(11)}`);
}
console.log("best = fastest of 20 timed batches (interference from other work only adds time); median = median batch");
mkdirSync("bench-results", { recursive: true });
writeFileSync("bench-results/hw.json", JSON.stringify({ when: new Date().toISOString(), load: loadavg(), rows }, null, 2));
console.log("wrote bench-results/hw.json");
