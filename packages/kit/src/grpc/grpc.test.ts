// gRPC plumbing over a real socket: a handler's errno reaches the client with
// the same name and number and the mapped status code; the response detail
// travels on failure; deadlines and missing handlers map to errnos.
import { status as GrpcStatus, Metadata, type ServiceError } from "@grpc/grpc-js";
import { Iommufd } from "@iommufd/proto/iommufd";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Errno, ErrnoError } from "../errno.js";
import { createLogger } from "../log.js";
import { grpcStatusOf } from "../wire-errors.js";
import { createClient } from "./client.js";
import { checkHealth } from "./health.js";
import { bind, type RunningGrpcServer, startGrpcServer } from "./server.js";

let server: RunningGrpcServer;
let seenCorrelation = "";
const signalSeen: string[] = [];

beforeAll(async () => {
  server = await startGrpcServer({
    log: createLogger("test", "silent"),
    services: [
      bind(Iommufd, {
        destroy(req, ctx) {
          seenCorrelation = ctx.correlationId;
          throw new ErrnoError(req.id === 0 ? "ENOENT" : "EBUSY", `object ${req.id}`);
        },
        hwptInvalidate(req) {
          throw new ErrnoError("EIO", "illegal command", { response: { entryNum: req.entryNum - 1 } });
        },
        async keepAlive(_req, ctx) {
          await new Promise((r) => setTimeout(r, 500));
          return { leaseMs: ctx.signal.aborted ? 0 : 1 };
        },
        // Waits up to ioasId ms for the call's signal, taken before the wait (numIovas 1: a listener) or after it.
        async ioasIovaRanges(req, ctx) {
          const early = req.numIovas === 1 ? ctx.signal : undefined;
          const aborted = await new Promise<boolean>((r) => {
            setTimeout(() => r((early ?? ctx.signal).aborted), req.ioasId);
            early?.addEventListener("abort", () => r(true));
          });
          signalSeen.push(`${early ? "early" : "late"} ${aborted ? "aborted" : "live"}`);
          return {};
        },
        ioasAlloc() {
          throw new Error("boom");
        },
      }),
    ],
  });
});

afterAll(() => server.shutdown());

describe("gRPC errno mapping", () => {
  it("an ErrnoError reaches the client with the same errno name, number and mapped status code", async () => {
    const c = createClient(Iommufd, server.address);
    for (const [id, errno] of [
      [0, "ENOENT"],
      [7, "EBUSY"],
    ] as const) {
      const err = await c.rpc.destroy({ id }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ErrnoError);
      const e = err as ErrnoError;
      expect(e.errno).toBe(errno);
      expect(e.number).toBe(Errno[errno]);
      expect(e.message).toBe(`object ${id}`);
      expect((e.cause as ServiceError).code).toBe(grpcStatusOf[errno]);
      expect((e.cause as ServiceError).metadata.get("iommufd-errno")[0]).toBe(`${errno}=${Errno[errno]}`);
    }
    c.close();
  });

  it("carries the correlation id the client sent", async () => {
    const c = createClient(Iommufd, server.address);
    await c.rpc.destroy({ id: 1 }, { metadata: { "x-correlation-id": "cid-42" } }).catch(() => undefined);
    expect(seenCorrelation).toBe("cid-42");
    c.close();
  });

  it("sends the response message as a status detail on failure (HWPT_INVALIDATE entry_num)", async () => {
    const c = createClient(Iommufd, server.address);
    const e = (await c.rpc.hwptInvalidate({ hwptId: 1, entryNum: 5 }).catch((x: unknown) => x)) as ErrnoError;
    expect(e.errno).toBe("EIO");
    expect((e.response as { entryNum: number }).entryNum).toBe(4);
    c.close();
  });

  it("maps a missing handler to ENOTTY / UNIMPLEMENTED and a crash to EIO", async () => {
    const c = createClient(Iommufd, server.address);
    const missing = (await c.rpc.ioasMap({}).catch((x: unknown) => x)) as ErrnoError;
    expect(missing.errno).toBe("ENOTTY");
    expect((missing.cause as ServiceError).code).toBe(GrpcStatus.UNIMPLEMENTED);
    const crash = (await c.rpc.ioasAlloc({}).catch((x: unknown) => x)) as ErrnoError;
    expect(crash.errno).toBe("EIO");
    expect(crash.message).toContain("boom");
    c.close();
  });

  it("turns a passed deadline into ETIMEDOUT", async () => {
    const c = createClient(Iommufd, server.address);
    const e = (await c.rpc.keepAlive({}, { deadlineMs: 100 }).catch((x: unknown) => x)) as ErrnoError;
    expect(e.errno).toBe("ETIMEDOUT");
    c.close();
  });

  it("aborts the handler's signal when the call is cancelled, whether it was taken before or after, and only then", async () => {
    const c = createClient(Iommufd, server.address);
    signalSeen.length = 0;
    const call = (ms: number, early: boolean, deadlineMs?: number) =>
      c.rpc.ioasIovaRanges({ ioasId: ms, numIovas: early ? 1 : 0 }, { deadlineMs }).then(
        () => "ok",
        (e: ErrnoError) => e.errno,
      );
    expect(await call(10, true)).toBe("ok");
    expect(await call(10, false)).toBe("ok");
    expect(await call(5000, true, 100)).toBe("ETIMEDOUT");
    expect(await call(300, false, 100)).toBe("ETIMEDOUT");
    await new Promise((r) => setTimeout(r, 400));
    expect(signalSeen).toEqual(["early live", "late live", "early aborted", "late aborted"]);
    c.close();
  });

  it("serves the standard health service", async () => {
    expect(await checkHealth(server.address)).toBe("SERVING");
    expect(await checkHealth(server.address, "iommufd.v1.Iommufd")).toBe("SERVING");
    await expect(checkHealth(server.address, "no.such.Service")).rejects.toThrow(/NOT_FOUND|unknown/i);
  });

  it("decodes the standard trailer even without our detail (third-party servers)", async () => {
    const { grpcErrorToErrno } = await import("../wire-errors.js");
    const md = new Metadata();
    md.set("iommufd-errno", "EEXIST=17");
    const e = grpcErrorToErrno({ code: GrpcStatus.ALREADY_EXISTS, details: "x", metadata: md, message: "x", name: "Error" });
    expect(e.errno).toBe("EEXIST");
  });
});
