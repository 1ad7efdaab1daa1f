// The only place where errnos meet the wire. gRPC: status code from one table,
// the errno as an `iommufd-errno` trailer and as an ErrnoDetail inside
// google.rpc.Status (`grpc-status-details-bin`), plus the RPC's own response
// message as a second detail where the kernel writes outputs back on failure.
// NATS: the same trailer as a reply header, the response (if any) as the body.

import { create, type DescMessage, fromBinary, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { anyIs, anyPack, anyUnpack } from "@bufbuild/protobuf/wkt";
import { status as GrpcStatus, Metadata, type ServiceError, type StatusObject } from "@grpc/grpc-js";
import { StatusSchema } from "@iommufd/proto/google";
import { ErrnoDetailSchema } from "@iommufd/proto/iommufd";
import { Errno, ErrnoError, type ErrnoName, errnoName, isErrnoName } from "./errno.js";

export const ERRNO_TRAILER = "iommufd-errno";
export const ERROR_MESSAGE_HEADER = "iommufd-error";
const DETAILS_TRAILER = "grpc-status-details-bin";

/** errno → gRPC status code. One row per errno; anything missing is UNKNOWN. */
export const grpcStatusOf: Readonly<Record<ErrnoName, GrpcStatus>> = {
  EPERM: GrpcStatus.PERMISSION_DENIED,
  ENOENT: GrpcStatus.NOT_FOUND,
  ESRCH: GrpcStatus.NOT_FOUND,
  EINTR: GrpcStatus.CANCELLED,
  EIO: GrpcStatus.UNKNOWN,
  ENXIO: GrpcStatus.NOT_FOUND,
  E2BIG: GrpcStatus.INVALID_ARGUMENT,
  EBADF: GrpcStatus.INVALID_ARGUMENT,
  EAGAIN: GrpcStatus.UNAVAILABLE,
  ENOMEM: GrpcStatus.RESOURCE_EXHAUSTED,
  EACCES: GrpcStatus.PERMISSION_DENIED,
  EFAULT: GrpcStatus.INVALID_ARGUMENT,
  EBUSY: GrpcStatus.FAILED_PRECONDITION,
  EEXIST: GrpcStatus.ALREADY_EXISTS,
  ENODEV: GrpcStatus.FAILED_PRECONDITION,
  EINVAL: GrpcStatus.INVALID_ARGUMENT,
  EMFILE: GrpcStatus.RESOURCE_EXHAUSTED,
  ENOTTY: GrpcStatus.UNIMPLEMENTED,
  ENOSPC: GrpcStatus.RESOURCE_EXHAUSTED,
  ESPIPE: GrpcStatus.INVALID_ARGUMENT,
  ERANGE: GrpcStatus.OUT_OF_RANGE,
  EDEADLK: GrpcStatus.ABORTED,
  EOVERFLOW: GrpcStatus.OUT_OF_RANGE,
  EMSGSIZE: GrpcStatus.OUT_OF_RANGE,
  EOPNOTSUPP: GrpcStatus.UNIMPLEMENTED,
  EADDRINUSE: GrpcStatus.ALREADY_EXISTS,
  ENOTCONN: GrpcStatus.UNAVAILABLE,
  ETIMEDOUT: GrpcStatus.DEADLINE_EXCEEDED,
};

/** gRPC status → errno, for failures that did not come from our handlers. */
function errnoOfStatus(code: GrpcStatus): ErrnoName {
  switch (code) {
    case GrpcStatus.DEADLINE_EXCEEDED:
      return "ETIMEDOUT";
    case GrpcStatus.UNAVAILABLE:
      return "ENOTCONN";
    case GrpcStatus.UNIMPLEMENTED:
      return "ENOTTY";
    case GrpcStatus.CANCELLED:
      return "EINTR";
    case GrpcStatus.RESOURCE_EXHAUSTED:
      return "ENOMEM";
    default:
      return "EIO";
  }
}

function formatErrno(errno: ErrnoName): string {
  return `${errno}=${Errno[errno]}`;
}

function parseErrno(value: string | undefined): ErrnoName | undefined {
  if (!value) return undefined;
  const [name, num] = value.split("=");
  if (name && isErrnoName(name)) return name;
  return num ? errnoName(Number(num)) : undefined;
}

/** Anything thrown by a handler → ErrnoError (unexpected exceptions become EIO). */
export function toErrnoError(e: unknown): ErrnoError {
  if (e instanceof ErrnoError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new ErrnoError("EIO", `internal error: ${message}`, { cause: e });
}

/** Server side: an ErrnoError → the gRPC status object grpc-js sends. */
export function errnoToGrpcStatus(err: ErrnoError, responseSchema?: DescMessage): Partial<StatusObject> {
  const code = grpcStatusOf[err.errno] ?? GrpcStatus.UNKNOWN;
  const details = [
    anyPack(ErrnoDetailSchema, create(ErrnoDetailSchema, { name: err.errno, number: err.number, message: err.message })),
  ];
  if (responseSchema && err.response !== undefined) {
    details.push(anyPack(responseSchema, create(responseSchema, err.response as never)));
  }
  const metadata = new Metadata();
  metadata.set(ERRNO_TRAILER, formatErrno(err.errno));
  const status = create(StatusSchema, { code, message: `${err.errno}: ${err.message}`, details });
  metadata.set(DETAILS_TRAILER, Buffer.from(toBinary(StatusSchema, status)));
  return { code, details: `${err.errno}: ${err.message}`, metadata };
}

/** Client side: a grpc-js ServiceError → ErrnoError (with the response detail decoded when present). */
export function grpcErrorToErrno<O extends DescMessage>(e: ServiceError, responseSchema?: O): ErrnoError {
  let errno = parseErrno(e.metadata?.get(ERRNO_TRAILER)[0]?.toString());
  let message = e.details || e.message;
  let response: MessageShape<O> | undefined;
  const raw = e.metadata?.get(DETAILS_TRAILER)[0];
  if (raw instanceof Buffer) {
    const status = fromBinary(StatusSchema, new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength));
    for (const any of status.details) {
      if (anyIs(any, ErrnoDetailSchema)) {
        const d = anyUnpack(any, ErrnoDetailSchema);
        if (d) {
          errno = (isErrnoName(d.name) ? d.name : errnoName(d.number)) ?? errno;
          message = d.message;
        }
      } else if (responseSchema && anyIs(any, responseSchema)) {
        response = anyUnpack(any, responseSchema);
      }
    }
  }
  if (!errno) {
    errno = errnoOfStatus(e.code);
    message = `${GrpcStatus[e.code]}: ${e.details || e.message}`;
  }
  return new ErrnoError(errno, message, { response, cause: e });
}

/** NATS reply headers for a failed request. */
export function errnoToHeaders(err: ErrnoError): Record<string, string> {
  return { [ERRNO_TRAILER]: formatErrno(err.errno), [ERROR_MESSAGE_HEADER]: err.message };
}

/** NATS: decode an error reply, or undefined when the reply is a success. */
export function headersToErrno(get: (key: string) => string | undefined): ErrnoError | undefined {
  const errno = parseErrno(get(ERRNO_TRAILER));
  if (!errno) return undefined;
  return new ErrnoError(errno, get(ERROR_MESSAGE_HEADER) || errno);
}
