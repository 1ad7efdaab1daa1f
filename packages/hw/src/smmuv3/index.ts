// Public surface of the SMMUv3 device model (and the walk tool core, which
// lives in ../tools but is exported here so @iommufd/hw has one line per part).
// Test support (testbed.ts) is deliberately not exported.

export * from "./regs.js";
export * from "./ste.js";
export * from "./cd.js";
export * from "./commands.js";
export * from "./events.js";
export * from "./faults.js";
export * from "./pri.js";
export * from "./queue.js";
export * from "./streamtable.js";
export * from "./cdtable.js";
export * from "./config.js";
export * from "./smmu.js";
export * from "./driver.js";
export * from "../tools/walk.js";
