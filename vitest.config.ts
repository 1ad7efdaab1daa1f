import { defineConfig } from "vitest/config";

// One config for every tier: unit tests live next to the code, cross-process
// tests in test/. Cross-process tests start real processes, so they get long
// timeouts and run files one at a time (2 cores).
export default defineConfig({
  test: {
    include: ["packages/*/src/**/*.test.ts", "services/*/src/**/*.test.ts", "test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
    fileParallelism: true,
    maxWorkers: 2,
  },
});
