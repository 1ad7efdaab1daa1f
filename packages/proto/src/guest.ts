// Generated-code entry point for proto package guest/v1 (run `npm run gen` to regenerate src/gen).
export * from "./gen/guest/v1/guest_pb.js";
