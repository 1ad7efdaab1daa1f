// Public surface of @iommufd/hw. Each part appends its own export lines.
export * from "./bits.js";
export * from "./memory.js";
