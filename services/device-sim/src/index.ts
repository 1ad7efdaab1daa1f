// @iommufd/device-sim: simulated PCIe endpoints (PASID, ATS/ATC, PRI) whose
// DMA crosses the host's IOMMU over NATS. The process entry is main.ts; this
// is the surface for tests, benchmarks and tools. The fake host used by
// tests and benchmarks is at "@iommufd/device-sim/testing".
export { type AtcInvalidation, type AtcUse, DeviceAtc } from "./atc-port.js";
export { Batcher, type BatcherOptions, type BatcherStats } from "./batcher.js";
export { type DmaBenchOptions, type DmaBenchRow, runDmaBench } from "./bench.js";
export {
  allEndpoints,
  ConfigError,
  checkUnique,
  deviceSimOptions,
  deviceSimSchema,
  ENDPOINT_KEYS,
  type EndpointConfig,
  parseConfigFile,
  parseEndpointSpec,
  parseRid,
} from "./config.js";
export { deviceService, endpointInfo, endpointStats, MAX_DMA_RPC_BYTES } from "./control.js";
export { type Access, type AccessKind, type AccessResult, DmaEngine, MAX_OP_BYTES } from "./dma.js";
export { Endpoint, type EndpointCounters, type Grant, type MisbehaviourSettings, NO_MISBEHAVIOUR, UNREGISTER_SUBJECT } from "./endpoint.js";
export { LATENCY_BOUNDS_NS, LatencyHistogram } from "./histogram.js";
export { type PageWant, PriEngine, type PriOutcome } from "./pri.js";
export { patternSlice, SplitMix64 } from "./rng.js";
export { SeqCounter, SeqTracker, type SeqVerdict } from "./seq.js";
export { DeviceSim, type DeviceSimOptions } from "./sim.js";
export { normalizeSpec, Workload } from "./workload.js";
