// @iommufd/testkit: real processes for cross-process tests.
export * from "./processes.js";
export * from "./uapi.js";
export * from "./guest-ram.js";
