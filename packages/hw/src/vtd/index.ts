// Public surface of the VT-d scalable-mode model.

export * from "./common.js";
export * from "./config.js";
export * from "./driver.js";
export * from "./entries.js";
export * from "./fault-map.js";
export * from "./fault-reasons.js";
export * from "./fault-record.js";
export * from "./invdesc.js";
export * from "./lookup.js";
export * from "./prq.js";
export * from "./regs.js";
export * from "./tables.js";
export * from "./vtd.js";
export * from "./walk-tool.js";
