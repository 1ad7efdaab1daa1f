// A VMM-like client of the host's uAPI for tests: one session (an open
// /dev/iommu), its typed Iommufd client with the session token attached, and
// the Admin client; `errno()` turns a failing call into its errno name.
import { ErrnoError, createClient } from "@iommufd/kit";
import { Admin, EventDelivery, Iommufd } from "@iommufd/proto/iommufd";

export interface UapiSession {
  readonly token: string;
  readonly sessionId: string;
  readonly io: ReturnType<typeof createClient<typeof Iommufd>>["rpc"];
  readonly admin: ReturnType<typeof createClient<typeof Admin>>["rpc"];
  close(): Promise<void>;
}

export async function openSession(
  address: string,
  opts: { clientName?: string; leaseMs?: number; delivery?: "nats" | "read"; capSysResource?: boolean } = {},
): Promise<UapiSession> {
  const opener = createClient(Iommufd, address);
  const r = await opener.rpc.openSession({
    clientName: opts.clientName ?? "test",
    leaseMs: opts.leaseMs ?? 0,
    eventDelivery: opts.delivery === "read" ? EventDelivery.READ : EventDelivery.NATS,
    capSysResource: opts.capSysResource ?? false,
  });
  opener.close();
  const io = createClient(Iommufd, address, { metadata: { "iommufd-session": r.session } });
  const admin = createClient(Admin, address);
  return {
    token: r.session,
    sessionId: r.sessionId,
    io: io.rpc,
    admin: admin.rpc,
    async close() {
      await io.rpc.closeSession({}).catch(() => undefined);
      io.close();
      admin.close();
    },
  };
}

/** The errno a call failed with, or "ok". */
export async function errno(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (e) {
    if (e instanceof ErrnoError) return e.errno;
    throw e;
  }
}

/** The ErrnoError a call failed with (throws if it succeeded). */
export async function failure(p: Promise<unknown>): Promise<ErrnoError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ErrnoError) return e;
    throw e;
  }
  throw new Error("expected the call to fail");
}
