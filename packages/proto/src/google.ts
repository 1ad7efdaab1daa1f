// Generated-code entry point for proto package google/rpc (run `npm run gen` to regenerate src/gen).
export * from "./gen/google/rpc/status_pb.js";
