// The one dispatch table of the host (the kernel's iommufd_ioctl_ops): every
// Iommufd RPC maps to one handler. The dispatcher, not the handlers, checks
// the session, serializes the call within it, and publishes the objects a
// successful call created — or aborts them when it failed, so a failed call
// leaves nothing behind (reserve-then-publish).
import type { DescMessage, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { GenService } from "@bufbuild/protobuf/codegenv2";
import { type CallContext, ErrnoError, type Logger, type ServiceImpl } from "@iommufd/kit";
import type { Host } from "./host.js";
import type { IommufdObject } from "./object.js";
import type { Session } from "./session.js";

/** The per-call context (the kernel's struct iommufd_ucmd). */
export class Ucmd {
  private readonly created: IommufdObject[] = [];
  #log?: Logger;

  constructor(
    readonly session: Session,
    readonly host: Host,
    private readonly ctx: CallContext,
  ) {}

  /** The call's logger with the session bound, made on first use (most calls log nothing). */
  get log(): Logger {
    return (this.#log ??= this.ctx.log.child({ session: this.session.id }));
  }

  /** Reserve an ID for a new object; it becomes visible only if the call succeeds. */
  alloc<T extends IommufdObject>(obj: T): T {
    obj.id = this.session.objects.reserve();
    // Tracked before the fault point: a failure here still releases what the object holds.
    this.created.push(obj);
    this.session.failNth.point(`alloc ${obj.type}`);
    return obj;
  }

  /** A fault point (fail-nth) for a step that can fail. */
  readonly point = (where: string): void => this.session.failNth.point(where);

  finalize(): void {
    for (const o of this.created) this.session.objects.publish(o.id, o);
  }

  /** Undo: release what each new object took, newest first, and give back the IDs. */
  abort(): void {
    for (const o of [...this.created].reverse()) {
      o.dying = true;
      o.release();
      this.session.objects.unreserve(o.id);
    }
  }
}

type MethodsOf<S> = S extends GenService<infer M> ? M : never;

export type UcmdHandler<I extends DescMessage, O extends DescMessage> = (
  req: MessageShape<I>,
  ucmd: Ucmd,
) => Promise<MessageInitShape<O>> | MessageInitShape<O>;

/** One handler per RPC, taking the Ucmd instead of the raw call context. */
export type UcmdTable<S> = {
  [K in keyof MethodsOf<S>]?: MethodsOf<S>[K] extends {
    input: infer I extends DescMessage;
    output: infer O extends DescMessage;
  }
    ? UcmdHandler<I, O>
    : never;
};

/** Handlers that run without a session (OpenSession). */
export type SessionlessTable<S> = {
  [K in keyof MethodsOf<S>]?: MethodsOf<S>[K] extends {
    input: infer I extends DescMessage;
    output: infer O extends DescMessage;
  }
    ? (req: MessageShape<I>, host: Host, ctx: CallContext) => Promise<MessageInitShape<O>> | MessageInitShape<O>
    : never;
};

/**
 * Build the gRPC implementation from the table. RPCs missing from both tables
 * answer ENOTTY, the kernel's answer to an ioctl it does not have.
 */
export function buildService<S extends DescService>(
  service: S,
  host: Host,
  table: UcmdTable<S>,
  sessionless: SessionlessTable<S> = {},
): ServiceImpl<S> {
  const impl: Record<string, unknown> = {};
  for (const m of service.methods) {
    const free = (sessionless as Record<string, Function | undefined>)[m.localName];
    const fn = (table as Record<string, Function | undefined>)[m.localName];
    if (free) {
      impl[m.localName] = (req: unknown, ctx: CallContext) => free(req, host, ctx);
    } else if (fn) {
      impl[m.localName] = (req: unknown, ctx: CallContext) => {
        const session = host.sessionOf(ctx.metadata);
        return session.serialize(async () => {
          // Any call shows the client is alive: the lease runs from the end of its last call.
          session.renew();
          const ucmd = new Ucmd(session, host, ctx);
          try {
            const out = await fn(req, ucmd);
            ucmd.finalize();
            return out;
          } catch (e) {
            ucmd.abort();
            throw e;
          } finally {
            session.renew();
          }
        });
      };
    } else {
      impl[m.localName] = () => {
        throw new ErrnoError("ENOTTY", `${service.typeName}/${m.name} is not implemented by this host`);
      };
    }
  }
  return impl as ServiceImpl<S>;
}
