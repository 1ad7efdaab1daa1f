// @iommufd/topology: the topology description (schema, default, loading),
// the mapping from it to processes and their flags, the local launcher,
// and the deploy/ generator (compose.yaml, Dockerfile).
export * from "./compose.js";
export * from "./compose-schema.js";
export * from "./default.js";
export * from "./launcher.js";
export * from "./load.js";
export * from "./logfmt.js";
export * from "./plan.js";
export * from "./process.js";
export * from "./schema.js";
