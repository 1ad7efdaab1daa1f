// Public surface of @iommufd/hw. Each part appends its own export lines.
export * from "./bits.js";
export * from "./memory.js";
// Common translation path: contract, formats, walker, caches.
export * from "./translation.js";
export * from "./format/arm.js";
export * from "./format/vtd.js";
export * from "./walk/walk.js";
export * from "./format/map.js";
export * from "./cache/ranges.js";
export * from "./cache/iotlb.js";
export * from "./cache/config-cache.js";
export * from "./cache/atc.js";
export * from "./vtd/index.js";
export * from "./walk/views.js";
export * from "./smmuv3/index.js";
export * from "./bench.js";
export * from "./walk/dirty.js";
