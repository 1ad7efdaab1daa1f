// Generated-code entry point for proto package iommufd/v1 (run `npm run gen` to regenerate src/gen).
export * from "./gen/iommufd/v1/admin_pb.js";
export * from "./gen/iommufd/v1/amd_pb.js";
export * from "./gen/iommufd/v1/errno_pb.js";
export * from "./gen/iommufd/v1/iommufd_pb.js";
export * from "./gen/iommufd/v1/smmuv3_pb.js";
export * from "./gen/iommufd/v1/vtd_pb.js";
