// @iommufd/testkit: real processes for cross-process tests.
export * from "./processes.js";
