// Generated-code entry point for proto package bus/v1 (run `npm run gen` to regenerate src/gen).
export * from "./gen/bus/v1/ats_pb.js";
export * from "./gen/bus/v1/bus_pb.js";
export * from "./gen/bus/v1/dma_pb.js";
export * from "./gen/bus/v1/events_pb.js";
export * from "./gen/bus/v1/faults_pb.js";
export * from "./gen/bus/v1/mem_pb.js";
export * from "./gen/bus/v1/pri_pb.js";
export * from "./gen/bus/v1/register_pb.js";
export * from "./gen/bus/v1/translation_pb.js";
