// Prints "N passed, N failed[, N skipped]" from a vitest JSON report. A missing
// or unreadable report, or files that failed to load, count as failures.
import { readFileSync } from "node:fs";

const path = process.argv[2];
let report;
try {
  report = JSON.parse(readFileSync(path, "utf8"));
} catch (e) {
  console.log("0 passed, 1 failed");
  console.error(`summary: no vitest report at ${path}: ${e.message}`);
  process.exit(1);
}
const passed = report.numPassedTests ?? 0;
// Test files that crashed before running any test show up only as failed suites.
const brokenFiles = (report.testResults ?? []).filter((f) => f.status === "failed" && (f.assertionResults ?? []).length === 0).length;
const failed = (report.numFailedTests ?? 0) + brokenFiles;
const skipped = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
process.exit(failed > 0 ? 1 : 0);
