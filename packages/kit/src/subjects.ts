// The NATS subject scheme (DESIGN §6), in one place. Versioned and
// hierarchical so a tool can watch a whole VM or device with a wildcard.
const V = "iommu.v1";

/** PCI requester ID (bus:dev.fn) as it appears in subjects: 4 hex digits. */
export function ridToken(rid: number): string {
  return rid.toString(16).padStart(4, "0");
}

export const subjects = {
  /** device → host, request/reply, batched DMA */
  dma: (rid: number) => `${V}.dev.${ridToken(rid)}.dma`,
  /** device → host, request/reply, batched ATS translation requests */
  ats: (rid: number) => `${V}.dev.${ridToken(rid)}.ats`,
  /** host → device, request/reply; the reply is the completion the host waits on */
  atcInv: (rid: number) => `${V}.dev.${ridToken(rid)}.atc-inv`,
  /** device → host, publish: page requests */
  pri: (rid: number) => `${V}.dev.${ridToken(rid)}.pri`,
  /** host → device, publish: page group responses */
  priResp: (rid: number) => `${V}.dev.${ridToken(rid)}.pri-resp`,
  /** device → host, request/reply: hot-plug */
  register: `${V}.dev.register`,
  /** device → host, request/reply: hot-unplug */
  unregister: `${V}.dev.unregister`,
  /** host → all, publish: the host (re)started; devices register again */
  hostUp: `${V}.host.up`,
  /** VMM/guest → host, request/reply, batched guest-RAM scatter/gather */
  mem: (session: string) => `${V}.s.${session}.mem`,
  /** host → guest, publish with sequence numbers */
  veventq: (session: string, veventqId: number | "*") => `${V}.s.${session}.veventq.${veventqId}`,
  /** host → guest, publish: IOPF records */
  fault: (session: string, faultId: number | "*") => `${V}.s.${session}.fault.${faultId}`,
  /** guest → host, publish: page responses */
  faultResp: (session: string, faultId: number | "*") => `${V}.s.${session}.fault.${faultId}.resp`,
  /** tool → any process, request/reply: fault-injection rules */
  faults: (proc: string) => `${V}.ctl.${proc}.faults`,
  /** tool → any process, request/reply: liveness and echo */
  ping: (proc: string) => `${V}.ctl.${proc}.ping`,
} as const;
