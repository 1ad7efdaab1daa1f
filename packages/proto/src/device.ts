// Generated-code entry point for proto package device/v1 (run `npm run gen` to regenerate src/gen).
export * from "./gen/device/v1/device_pb.js";
