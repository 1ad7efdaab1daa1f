// The VMM's view of the host: the iommufd uAPI it calls, the host's device
// inventory, and the event streams (vEVENTQ / FAULT) it consumes. Each is an
// interface so the VMM can run against the real host (gRPC + NATS) or an
// in-process fake (testing/fake-host.ts) that records every call.
import type { ServiceClient } from "@iommufd/kit";
import type { IopfRecord, VeventRecord } from "@iommufd/proto/bus";
import type { Iommufd } from "@iommufd/proto/iommufd";

type Rpc = ServiceClient<typeof Iommufd>;

/** The iommufd RPCs the VMM uses. The typed client from createClient(Iommufd, ...) satisfies it. */
export type IommufdClient = Pick<
  Rpc,
  | "openSession"
  | "keepAlive"
  | "closeSession"
  | "memfdCreate"
  | "mmap"
  | "ioasAlloc"
  | "ioasMap"
  | "deviceBind"
  | "deviceAttach"
  | "deviceDetach"
  | "destroy"
  | "hwptAlloc"
  | "getHwInfo"
  | "hwptInvalidate"
  | "faultQueueAlloc"
  | "viommuAlloc"
  | "vdeviceAlloc"
  | "veventqAlloc"
>;

export type IommufdMethod = keyof IommufdClient;

/** What the host's inventory says about a device (Admin.Inventory), when the VMM can ask. */
export interface HostDeviceInfo {
  rid: number;
  name: string;
  /** Physical IOMMU instance ("smmu0"). */
  iommuId: string;
  maxPasidLog2: number;
  ats: boolean;
  pri: boolean;
}

export interface HostInventory {
  lookup(sel: { name?: string; rid?: number }): Promise<HostDeviceInfo | undefined>;
}

/** The host → VMM event streams and the VMM → host page responses (bus.v1 events.proto). */
export interface HostEventPort {
  subscribeVeventq(sessionId: string, veventqId: number, handler: (r: VeventRecord) => void): () => void;
  subscribeFault(sessionId: string, faultId: number, handler: (r: IopfRecord) => void): () => void;
  /** bus.v1.PageResponse on iommu.v1.s.<session>.fault.<id>.resp. */
  pageResponse(sessionId: string, faultId: number, cookie: number, code: number): void;
}

/** Wrap a client so every call is counted (Stats.host_calls) and can be observed. */
export function countingClient(client: IommufdClient, onCall: (method: IommufdMethod) => void): IommufdClient {
  return new Proxy(client, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== "function") return v;
      return (...args: unknown[]) => {
        onCall(prop as IommufdMethod);
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}
