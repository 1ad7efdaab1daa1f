// @iommufd/kit: gRPC and NATS plumbing for protobuf-es messages, the errno
// error type and its wire mapping, logging, configuration and the service runner.

export * from "./config.js";
export * from "./errno.js";
export { type ClientOptions, createClient, type GrpcClient } from "./grpc/client.js";
export { serviceDefinition } from "./grpc/codec.js";
export { checkHealth } from "./grpc/health.js";
export { bind, type GrpcServerOptions, type RunningGrpcServer, type ServiceBinding, startGrpcServer } from "./grpc/server.js";
export * from "./grpc/types.js";
export * from "./log.js";
export { Bus, type BusOptions, type MsgContext, type RequestOptions, type SendOptions } from "./nats/bus.js";
export { clearFaultRules, faultControl, type FaultRuleInit, listFaultRules, setFaultRules } from "./nats/fault-control.js";
export { applyFlips, type Direction, type FaultEffect, FaultInjector, subjectMatches, validSubjectPattern } from "./nats/faults.js";
export { ensureNatsServer, findNatsServer, INSTALL_HINT, type NatsServerProcess, startNatsServer } from "./nats/server.js";
export * from "./service.js";
export * from "./subjects.js";
export * from "./wire-errors.js";
